//! The Rego test runner behind `trustmesh policy test`.
//!
//! Loads the policies, the `*_test.rego` files and `data.json`, finds every
//! rule named `test_*` in each test file and evaluates it with regorus's
//! interpreter (which supports `with input as …` and `with data.… as …`). A
//! test passes iff it evaluates to exactly `true`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use regorus::unstable::{Parser, Rule, RuleHead};
use regorus::{Engine, Value};

use crate::engine::{PolicyEngine, PolicyFiles, SourceFile, dir_files, embedded_files, load_error};
use crate::error::{PolicyError, one_line};

/// Where the policies and their tests come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TestSource {
    /// The policies compiled into the binary.
    Embedded,
    /// A policy directory (the layout of the workspace's `policies/`).
    Dir(PathBuf),
}

/// The result of one `test_*` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestOutcome {
    /// `package.rule`, e.g. `trustmesh.gateway_test.test_health_allowed`.
    pub name: String,
    /// The test file.
    pub file: String,
    /// Whether the rule evaluated to exactly `true`.
    pub passed: bool,
    /// Why it failed: an evaluation error, or what it evaluated to.
    pub error: Option<String>,
}

/// Runs every `test_*` rule of every `*_test.rego` file, in file order, then
/// rule order. A file that does not load is an error, not a failed test; so
/// is a service package the [`PolicyEngine`] cannot prepare (for example one
/// calling an unknown function on a path no test covers).
pub fn run_tests(source: TestSource) -> Result<Vec<TestOutcome>, PolicyError> {
    let PolicyFiles {
        policies,
        data: data_files,
        tests,
    } = match &source {
        TestSource::Embedded => embedded_files(),
        TestSource::Dir(dir) => dir_files(dir)?,
    };
    PolicyEngine::from_files("tests".to_owned(), policies.clone(), data_files.clone())?;
    let mut engine = Engine::new();
    for file in &data_files {
        let value = Value::from_json_str(&file.text).map_err(|e| load(file, &e))?;
        engine.add_data(value).map_err(|e| load(file, &e))?;
    }
    let mut packages = Vec::with_capacity(tests.len());
    for file in policies.iter().chain(&tests) {
        let package = engine
            .add_policy(file.name.clone(), file.text.clone())
            .map_err(|e| load(file, &e))?;
        if file.name.ends_with("_test.rego") {
            packages.push((file.name.clone(), package));
        }
    }

    let mut plan = Vec::new();
    for (file, package) in &packages {
        for rule in test_rules(&mut engine, file) {
            plan.push((file.clone(), package.clone(), rule));
        }
    }

    let mut outcomes = Vec::with_capacity(plan.len());
    for (file, package, rule) in plan {
        let path = format!("{package}.{rule}");
        let (passed, error) = match engine.eval_rule(path.clone()) {
            Ok(Value::Bool(true)) => (true, None),
            Ok(Value::Undefined) => (false, Some("undefined (a condition failed)".to_owned())),
            Ok(other) => (
                false,
                Some(format!(
                    "evaluated to {}",
                    other.to_json_str().unwrap_or_default().replace('\n', "")
                )),
            ),
            Err(e) => (false, Some(one_line(&e.to_string()))),
        };
        outcomes.push(TestOutcome {
            name: path.trim_start_matches("data.").to_owned(),
            file,
            passed,
            error,
        });
    }
    Ok(outcomes)
}

fn load(file: &SourceFile, err: &impl std::fmt::Display) -> PolicyError {
    load_error(&file.name, err, std::slice::from_ref(file))
}

/// The distinct `test_*` rule names of the module loaded from `file`, in
/// source order (functions are not tests).
fn test_rules(engine: &mut Engine, file: &str) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut names = Vec::new();
    for module in engine.get_modules() {
        if module.package.span.source.get_path() != file {
            continue;
        }
        for rule in &module.policy {
            let refr = match rule.as_ref() {
                Rule::Spec {
                    head: RuleHead::Compr { refr, .. } | RuleHead::Set { refr, .. },
                    ..
                } => refr,
                Rule::Default { .. } | Rule::Spec { .. } => continue,
            };
            let Ok(components) = Parser::get_path_ref_components(refr) else {
                continue;
            };
            let [name] = components.as_slice() else {
                continue;
            };
            let name = name.text();
            if name.starts_with("test_") && seen.insert(name.to_owned()) {
                names.push(name.to_owned());
            }
        }
    }
    names
}
