//! The policy engine: loads Rego and data, prepares each service's decision
//! once, and evaluates decisions.
//!
//! Each service package `trustmesh.<service>` that declares `decision` is
//! compiled at load time into a regorus [`CompiledPolicy`] and, when the RVM
//! compiler covers everything the package uses, into RVM bytecode. Decisions
//! then run on a pooled [`RegoVM`] (a VM is not shared between threads; the
//! pool hands each evaluation its own); a package the RVM cannot compile is
//! evaluated with [`CompiledPolicy::eval_with_input`] instead.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use regorus::languages::rego::compiler::{Compiler, CompilerError};
use regorus::rvm::Instruction;
use regorus::rvm::program::Program;
use regorus::rvm::vm::RegoVM;
use regorus::{CompiledPolicy, Engine, Value};

use crate::error::{PolicyError, one_line};
use crate::input::{Decision, Keys, PolicyInput};

/// The generated list of embedded files (see `build.rs`).
mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_policies.rs"));
}

/// The environment variable naming a policy directory to load instead of the
/// embedded policies.
pub const POLICY_DIR_ENV: &str = "TRUSTMESH_POLICY_DIR";

/// The reason given when no package answers for a service.
pub const NO_POLICY: &str = "no_policy";

/// How many idle VMs a service keeps for reuse.
const VM_POOL_MAX: usize = 64;

/// One loaded file: the name used in messages and its text.
#[derive(Clone, Debug)]
pub(crate) struct SourceFile {
    pub(crate) name: String,
    pub(crate) text: String,
}

/// Which evaluator a service uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BackendChoice {
    /// RVM bytecode where it compiles, the interpreter elsewhere.
    Auto,
    /// Always the tree-walking interpreter (`CompiledPolicy`).
    Interpreter,
}

/// The compiled Rego policies and data; cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct PolicyEngine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut services: Vec<_> = self
            .inner
            .services
            .iter()
            .map(|(name, plan)| (name.as_str(), plan.backend_name()))
            .collect();
        services.sort_unstable();
        f.debug_struct("PolicyEngine")
            .field("origin", &self.inner.origin)
            .field("services", &services)
            .finish_non_exhaustive()
    }
}

struct Inner {
    origin: String,
    policies: Vec<SourceFile>,
    data_files: Vec<SourceFile>,
    backend: BackendChoice,
    workloads: HashMap<String, String>,
    services: HashMap<String, ServicePlan>,
    keys: Keys,
    /// The merged data document (`data`, without the packages).
    data: Value,
}

/// A service's prepared decision.
enum ServicePlan {
    Rvm(RvmPlan),
    /// The interpreter, and why the RVM is not used (`None`: by choice).
    Interpreter(CompiledPolicy, Option<String>),
}

struct RvmPlan {
    program: Arc<Program>,
    /// `line L col C` of each reference that makes the VM evaluate a whole
    /// package (see [`whole_package_lookups`]).
    whole_package_lookups: Vec<String>,
    policy: CompiledPolicy,
    data: Value,
    pool: Mutex<Vec<RegoVM>>,
}

impl RvmPlan {
    fn new_vm(&self) -> Result<RegoVM, PolicyError> {
        let mut vm = RegoVM::new_with_policy(self.policy.clone());
        vm.load_program(self.program.clone());
        vm.set_data(self.data.clone())
            .map_err(|e| PolicyError::Eval(one_line(&e.to_string())))?;
        Ok(vm)
    }

    fn eval(&self, input: Value) -> Result<Value, PolicyError> {
        let pooled = self
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut vm = match pooled {
            Some(vm) => vm,
            None => self.new_vm()?,
        };
        vm.set_input(input);
        let result = vm.execute();
        vm.set_input(Value::Null);
        match result {
            Ok(value) => {
                let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
                if pool.len() < VM_POOL_MAX {
                    pool.push(vm);
                }
                Ok(value)
            }
            // A VM that failed is dropped rather than reused.
            Err(e) => Err(PolicyError::Eval(one_line(&e.to_string()))),
        }
    }
}

impl ServicePlan {
    fn eval(&self, input: Value) -> Result<Value, PolicyError> {
        match self {
            Self::Rvm(plan) => plan.eval(input),
            Self::Interpreter(policy, _) => policy
                .eval_with_input(input)
                .map_err(|e| PolicyError::Eval(one_line(&e.to_string()))),
        }
    }

    fn backend_name(&self) -> &'static str {
        match self {
            Self::Rvm(_) => "rvm",
            Self::Interpreter(..) => "interpreter",
        }
    }
}

impl PolicyEngine {
    /// The policies of the workspace's `policies/` folder, compiled into the
    /// binary.
    pub fn embedded() -> Result<Self, PolicyError> {
        let files = embedded_files();
        Self::build(
            "embedded".to_owned(),
            files.policies,
            files.data,
            BackendChoice::Auto,
        )
    }

    /// Every `*.rego` under `dir` (recursively, excluding `*_test.rego`) and
    /// every `data.json` under it.
    pub fn from_dir(dir: &Path) -> Result<Self, PolicyError> {
        let files = dir_files(dir)?;
        Self::build(
            dir.display().to_string(),
            files.policies,
            files.data,
            BackendChoice::Auto,
        )
    }

    /// [`PolicyEngine::from_dir`] on `TRUSTMESH_POLICY_DIR` if it is set (and
    /// not empty), else [`PolicyEngine::embedded`].
    pub fn from_env() -> Result<Self, PolicyError> {
        match std::env::var_os(POLICY_DIR_ENV) {
            Some(dir) if !dir.is_empty() => Self::from_dir(Path::new(&dir)),
            _ => Self::embedded(),
        }
    }

    /// The same policies and data plus `files` (`(name, rego text)` pairs),
    /// for example a test service's package.
    pub fn with_extra_policies(self, files: &[(String, String)]) -> Result<Self, PolicyError> {
        let mut policies = self.inner.policies.clone();
        policies.extend(files.iter().map(|(name, text)| SourceFile {
            name: name.clone(),
            text: text.clone(),
        }));
        Self::build(
            self.inner.origin.clone(),
            policies,
            self.inner.data_files.clone(),
            self.inner.backend,
        )
    }

    /// The same policies plus the data documents `files` (`(name, JSON
    /// text)` pairs), merged into `data`: for example the agents a test
    /// deposits as.
    pub fn with_extra_data(self, files: &[(String, String)]) -> Result<Self, PolicyError> {
        let mut data_files = self.inner.data_files.clone();
        data_files.extend(files.iter().map(|(name, text)| SourceFile {
            name: name.clone(),
            text: text.clone(),
        }));
        Self::build(
            self.inner.origin.clone(),
            self.inner.policies.clone(),
            data_files,
            self.inner.backend,
        )
    }

    /// The same policies evaluated by regorus's tree-walking interpreter
    /// only (no RVM bytecode): for comparisons and benchmarks.
    #[doc(hidden)]
    pub fn interpreter_only(self) -> Result<Self, PolicyError> {
        Self::build(
            self.inner.origin.clone(),
            self.inner.policies.clone(),
            self.inner.data_files.clone(),
            BackendChoice::Interpreter,
        )
    }

    /// The services that have a policy package, sorted, with the evaluator
    /// each uses (`rvm` or `interpreter`).
    pub fn services(&self) -> Vec<(String, &'static str)> {
        let mut out: Vec<_> = self
            .inner
            .services
            .iter()
            .map(|(name, plan)| (name.clone(), plan.backend_name()))
            .collect();
        out.sort_unstable();
        out
    }

    /// Performance warnings, one line each: a service evaluated by the
    /// interpreter rather than the RVM (≈4× slower), and references that make
    /// the RVM evaluate a whole package (`lib.x` through an
    /// `import data.trustmesh.lib` alias). `trustmesh policy test` can print them.
    pub fn warnings(&self) -> Vec<String> {
        let mut services: Vec<_> = self.inner.services.iter().collect();
        services.sort_unstable_by_key(|(name, _)| name.as_str());
        let mut out = Vec::new();
        for (service, plan) in services {
            match plan {
                ServicePlan::Rvm(rvm) => {
                    for at in &rvm.whole_package_lookups {
                        out.push(format!(
                            "trustmesh.{service}: the reference at {at} evaluates a whole \
                             package on every decision; name the rule in full \
                             (data.trustmesh.lib.<rule>)"
                        ));
                    }
                }
                ServicePlan::Interpreter(_, Some(reason)) => out.push(format!(
                    "trustmesh.{service}: evaluated by the interpreter, not the RVM: {reason}"
                )),
                ServicePlan::Interpreter(_, None) => {}
            }
        }
        out
    }

    /// The logical workload name of `spiffe_id`, looked up in
    /// `data.workloads` by the ID's path (`/svc/gateway`), so the data does
    /// not depend on the trust domain.
    pub fn workload_for(&self, spiffe_id: &str) -> Option<String> {
        let path = spiffe_path(spiffe_id)?;
        self.inner.workloads.get(path).cloned()
    }

    /// The policy data at `path` (`["limits", "payment"]`) as JSON, `None`
    /// when absent: for a service that must pass a limit of the data on to
    /// another service (the payment service gives the wallet its daily
    /// limit, enforced atomically there).
    pub fn data_at(&self, path: &[&str]) -> Option<serde_json::Value> {
        let mut value = &self.inner.data;
        for key in path {
            value = &value[*key];
        }
        if *value == Value::Undefined {
            return None;
        }
        serde_json::to_value(value).ok()
    }

    /// Evaluates `data.trustmesh.<input.service>.decision`. A service without
    /// a package, or whose decision is undefined, is denied with `no_policy`.
    pub fn authorize(&self, input: &PolicyInput) -> Result<Decision, PolicyError> {
        let Some(plan) = self.inner.services.get(input.service.as_str()) else {
            return Ok(Decision::deny(NO_POLICY));
        };
        let value = input.to_value_with(&self.inner.keys);
        let result = plan.eval(value)?;
        decision_from(&result, &self.inner.keys)
    }

    pub(crate) fn from_files(
        origin: String,
        policies: Vec<SourceFile>,
        data_files: Vec<SourceFile>,
    ) -> Result<Self, PolicyError> {
        Self::build(origin, policies, data_files, BackendChoice::Auto)
    }

    fn build(
        origin: String,
        policies: Vec<SourceFile>,
        data_files: Vec<SourceFile>,
        backend: BackendChoice,
    ) -> Result<Self, PolicyError> {
        let mut engine = Engine::new();
        for file in &data_files {
            add_data_file(&mut engine, file)?;
        }
        let data = engine.get_data();
        let workloads = workloads_from(&data);

        // Package of each file, and the files of each service package.
        let mut service_files: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for file in &policies {
            let package = engine
                .add_policy(file.name.clone(), file.text.clone())
                .map_err(|e| load_error(&file.name, &e, &policies))?;
            let Some(service) = package
                .strip_prefix("data.trustmesh.")
                .filter(|s| !s.contains('.') && *s != "lib")
            else {
                continue;
            };
            if engine
                .has_declared_rule_rooted_at(&file.name, "decision")
                .unwrap_or(false)
            {
                service_files
                    .entry(service.to_owned())
                    .or_default()
                    .push(file.name.clone());
            }
        }

        let mut services = HashMap::new();
        for (service, files) in &service_files {
            let entry = format!("data.trustmesh.{service}.decision");
            let first_file = files.first().map_or(origin.as_str(), String::as_str);
            let compiled = engine
                .compile_with_entrypoint(&entry.as_str().into())
                .map_err(|e| {
                    let err = load_error(first_file, &e, &policies);
                    tracing::debug!(service, error = %err, "policy compilation failed");
                    err
                })?;
            let plan = match backend {
                BackendChoice::Interpreter => ServicePlan::Interpreter(compiled, None),
                BackendChoice::Auto => {
                    rvm_plan(service, &entry, compiled, &data, &policies, first_file)?
                }
            };
            services.insert(service.clone(), plan);
        }

        Ok(Self {
            inner: Arc::new(Inner {
                origin,
                policies,
                data_files,
                backend,
                workloads,
                services,
                keys: Keys::new(),
                data,
            }),
        })
    }
}

/// Compiles a service's decision to RVM bytecode, or keeps the interpreter
/// when the RVM compiler does not cover the package. Errors that are policy
/// bugs (an undefined variable or function) are load errors: the interpreter
/// would only report them when evaluating.
fn rvm_plan(
    service: &str,
    entry: &str,
    compiled: CompiledPolicy,
    data: &Value,
    policies: &[SourceFile],
    fallback_file: &str,
) -> Result<ServicePlan, PolicyError> {
    let program = match Compiler::compile_from_policy(&compiled, &[entry]) {
        Ok(program) => program,
        Err(e) => {
            if matches!(
                e.error,
                CompilerError::UnknownFunction { .. }
                    | CompilerError::UnknownBuiltinFunction { .. }
                    | CompilerError::NotBuiltinFunction { .. }
                    | CompilerError::UndefinedVariable { .. }
            ) {
                return Err(load_error(fallback_file, &e, policies));
            }
            let reason = one_line(&e.to_string());
            tracing::info!(
                service,
                reason,
                "policy runs on the regorus interpreter (not covered by the RVM)"
            );
            return Ok(ServicePlan::Interpreter(compiled, Some(reason)));
        }
    };
    let lookups = whole_package_lookups(&program);
    if !lookups.is_empty() {
        tracing::warn!(
            service,
            at = %lookups.join(", "),
            "policy references a package rather than a rule (e.g. `lib.x` through \
             `import data.trustmesh.lib`): each such reference evaluates the whole \
             package; write `data.trustmesh.lib.x`"
        );
    }
    let plan = RvmPlan {
        whole_package_lookups: lookups,
        program,
        policy: compiled.clone(),
        data: data.clone(),
        pool: Mutex::new(Vec::new()),
    };
    match plan.new_vm() {
        Ok(vm) => {
            plan.pool
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(vm);
            Ok(ServicePlan::Rvm(plan))
        }
        Err(e) => {
            tracing::info!(service, reason = %e, "policy runs on the regorus interpreter");
            Ok(ServicePlan::Interpreter(compiled, Some(e.to_string())))
        }
    }
}

/// Where `program` looks a reference up in the virtual `data` document (a
/// package prefix of rules) instead of calling one rule: `lib.allowed` through
/// an `import data.trustmesh.lib` alias compiles to "evaluate every rule of
/// `trustmesh.lib`, then index", about 3× the cost of the whole decision.
fn whole_package_lookups(program: &Program) -> Vec<String> {
    program
        .instructions
        .iter()
        .enumerate()
        .filter(|(_, i)| matches!(i, Instruction::VirtualDataDocumentLookup { .. }))
        .map(|(index, _)| {
            // The span's source index does not reliably name the file in
            // regorus 0.14 (its source table is in module order, the indices
            // in order of first use), so only the position is given.
            match program
                .instruction_spans
                .get(index)
                .and_then(Option::as_ref)
            {
                Some(span) => format!("line {} col {}", span.line, span.column),
                None => format!("instruction {index}"),
            }
        })
        .collect()
}

/// Reads a decision object `{"allow": bool, "reason": string}`.
fn decision_from(result: &Value, keys: &Keys) -> Result<Decision, PolicyError> {
    let obj = match result {
        Value::Undefined => return Ok(Decision::deny(NO_POLICY)),
        Value::Object(obj) => obj,
        other => {
            return Err(PolicyError::Eval(format!(
                "decision is not an object: {}",
                short_json(other)
            )));
        }
    };
    let allow = match obj.get(&keys.allow) {
        Some(Value::Bool(b)) => *b,
        _ => {
            return Err(PolicyError::Eval(format!(
                "decision has no boolean `allow`: {}",
                short_json(result)
            )));
        }
    };
    let reason = match obj.get(&keys.reason) {
        Some(Value::String(s)) => s.to_string(),
        None | Some(Value::Undefined) => if allow { "allowed" } else { "denied" }.to_owned(),
        Some(other) => {
            return Err(PolicyError::Eval(format!(
                "decision `reason` is not a string: {}",
                short_json(other)
            )));
        }
    };
    Ok(Decision { allow, reason })
}

fn short_json(v: &Value) -> String {
    let mut s = v.to_json_str().unwrap_or_else(|_| format!("{v:?}"));
    s.retain(|c| c != '\n');
    if s.len() > 200 {
        let mut cut = 200;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// The path of a SPIFFE ID (`spiffe://td/svc/x` → `/svc/x`).
pub(crate) fn spiffe_path(spiffe_id: &str) -> Option<&str> {
    let rest = spiffe_id.strip_prefix("spiffe://")?;
    let slash = rest.find('/')?;
    let path = &rest[slash..];
    (path.len() > 1).then_some(path)
}

fn workloads_from(data: &Value) -> HashMap<String, String> {
    let mut out = HashMap::new();
    if let Ok(obj) = data["workloads"].as_object() {
        for (k, v) in obj.iter() {
            if let (Value::String(k), Value::String(v)) = (k, v) {
                out.insert(k.to_string(), v.to_string());
            }
        }
    }
    out
}

fn add_data_file(engine: &mut Engine, file: &SourceFile) -> Result<(), PolicyError> {
    let load = |message: String| PolicyError::Load {
        file: file.name.clone(),
        message,
    };
    let value = Value::from_json_str(&file.text).map_err(|e| load(one_line(&e.to_string())))?;
    if !matches!(value, Value::Object(_)) {
        return Err(load("data must be a JSON object".to_owned()));
    }
    engine
        .add_data(value)
        .map_err(|e| load(one_line(&e.to_string())))
}

/// A load error naming the file the message points at (regorus messages
/// carry `--> path:line:col`) or else `fallback`.
pub(crate) fn load_error(
    fallback: &str,
    err: &impl std::fmt::Display,
    files: &[SourceFile],
) -> PolicyError {
    let message = one_line(&err.to_string());
    let file = files
        .iter()
        .map(|f| f.name.as_str())
        .filter(|name| message.contains(&format!("{name}:")))
        .max_by_key(|name| name.len())
        .unwrap_or(fallback)
        .to_owned();
    // `file:line:col: text` → `line:col: text`; the file is named once.
    let message = message
        .strip_prefix(file.as_str())
        .and_then(|rest| rest.strip_prefix(':'))
        .map_or(message.clone(), str::to_owned);
    PolicyError::Load { file, message }
}

/// The files of a policy directory, by kind.
#[derive(Debug, Default)]
pub(crate) struct PolicyFiles {
    /// `*.rego` except tests.
    pub(crate) policies: Vec<SourceFile>,
    /// `data.json` files.
    pub(crate) data: Vec<SourceFile>,
    /// `*_test.rego`.
    pub(crate) tests: Vec<SourceFile>,
}

/// The embedded files.
pub(crate) fn embedded_files() -> PolicyFiles {
    split_files(
        embedded::EMBEDDED_FILES
            .iter()
            .map(|(rel, text)| (format!("policies/{rel}"), (*text).to_owned())),
    )
}

/// The files of `dir`.
pub(crate) fn dir_files(dir: &Path) -> Result<PolicyFiles, PolicyError> {
    let mut paths = Vec::new();
    collect_dir(dir, &mut paths)?;
    paths.sort();
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| PolicyError::Load {
            file: name.clone(),
            message: e.to_string(),
        })?;
        files.push((name, text));
    }
    Ok(split_files(files.into_iter()))
}

fn collect_dir(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), PolicyError> {
    let io = |e: std::io::Error| PolicyError::Load {
        file: dir.display().to_string(),
        message: e.to_string(),
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        if path.is_dir() {
            collect_dir(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rego")
            || path.file_name().is_some_and(|n| n == "data.json")
        {
            out.push(path);
        }
    }
    Ok(())
}

fn split_files(files: impl Iterator<Item = (String, String)>) -> PolicyFiles {
    let mut out = PolicyFiles::default();
    for (name, text) in files {
        let file = SourceFile { name, text };
        if file.name.ends_with("data.json") {
            out.data.push(file);
        } else if file.name.ends_with("_test.rego") {
            out.tests.push(file);
        } else {
            out.policies.push(file);
        }
    }
    out
}

/// Distinct services in `files` (used by tests).
#[cfg(test)]
pub(crate) fn service_names(engine: &PolicyEngine) -> std::collections::BTreeSet<String> {
    engine.inner.services.keys().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_paths() {
        assert_eq!(
            spiffe_path("spiffe://trustmesh.local/svc/gateway"),
            Some("/svc/gateway")
        );
        assert_eq!(spiffe_path("spiffe://trustmesh.local"), None);
        assert_eq!(spiffe_path("spiffe://trustmesh.local/"), None);
        assert_eq!(spiffe_path("https://x/svc/gateway"), None);
    }

    /// Every embedded service runs on the RVM and calls rules directly (no
    /// whole-package lookups, see `whole_package_lookups`).
    #[test]
    fn embedded_services_are_fast_paths() {
        let engine = PolicyEngine::embedded().expect("embedded policies load");
        assert!(engine.warnings().is_empty(), "{:#?}", engine.warnings());
        for (service, plan) in &engine.inner.services {
            match plan {
                ServicePlan::Rvm(rvm) => assert!(
                    rvm.whole_package_lookups.is_empty(),
                    "{service}: write data.trustmesh.lib.<rule> instead of lib.<rule> at {:?}",
                    rvm.whole_package_lookups
                ),
                ServicePlan::Interpreter(..) => {
                    panic!("{service} is not covered by the RVM (see the load log)")
                }
            }
        }
    }

    #[test]
    fn aliased_package_reference_is_detected() {
        let engine = PolicyEngine::embedded()
            .expect("embedded")
            .with_extra_policies(&[(
                "alias.rego".into(),
                "package trustmesh.alias\n\nimport data.trustmesh.lib\n\ndecision := lib.allowed if lib.has_peer\n".into(),
            )])
            .expect("loads");
        let Some(ServicePlan::Rvm(plan)) = engine.inner.services.get("alias") else {
            panic!("alias should run on the RVM");
        };
        assert_eq!(
            plan.whole_package_lookups.len(),
            2,
            "{:?}",
            plan.whole_package_lookups
        );
        assert_eq!(engine.warnings().len(), 2, "{:?}", engine.warnings());
        assert!(
            plan.whole_package_lookups[0] == "line 3 col 22",
            "{:?}",
            plan.whole_package_lookups
        );
    }

    #[test]
    fn embedded_has_gateway_on_rvm() {
        let engine = PolicyEngine::embedded().expect("embedded policies load");
        assert!(service_names(&engine).contains("gateway"));
        assert!(
            engine.services().contains(&("gateway".to_owned(), "rvm")),
            "{engine:?}"
        );
    }
}
