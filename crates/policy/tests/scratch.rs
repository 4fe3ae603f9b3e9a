//! scratch
mod common;
use regorus::rvm::program::{generate_assembly_listing, AssemblyListingConfig};
#[test]
fn scratch() {
    let mut e = regorus::Engine::new();
    e.add_data(regorus::Value::from_json_str(include_str!("../../../policies/data.json")).unwrap()).unwrap();
    e.add_policy("lib.rego".into(), include_str!("../../../policies/lib/lib.rego").into()).unwrap();
    e.add_policy("demo.rego".into(), common::DEMO_REGO.into()).unwrap();
    let entry = "data.trustmesh.demo.decision";
    let c = e.compile_with_entrypoint(&entry.into()).unwrap();
    let p = regorus::languages::rego::compiler::Compiler::compile_from_policy(&c, &[entry]).unwrap();
    println!("{}", generate_assembly_listing(&p, &AssemblyListingConfig::default()));
}
