//! A stand-in for the Kubernetes API server, for end-to-end tests of the
//! real control plane: no kube-apiserver (nor etcd, kind or k3s) can be
//! installed on this machine, so tests point `phoenix-control-plane
//! kubernetes` at this instead, through the kubeconfig it writes.
//!
//! It serves what the control plane and kube-rs ask of an API server, with
//! a real server's shapes and status codes:
//! - a generic object store for the kinds in [`KINDS`], one global
//!   increasing resourceVersion, and the metadata a real server stamps
//!   (uid, creationTimestamp, generation);
//! - list (equality label selectors; everything in one page, whatever the
//!   `limit`), watch (chunked JSON lines after a resourceVersion, or every
//!   object first without one; bookmarks, `sendInitialEvents`, 410 Gone
//!   after [`ApiServer::change_unwatched`]), get, create (409
//!   AlreadyExists; 404 in a missing namespace), replace (409 Conflict on a
//!   stale resourceVersion), merge, JSON and server-side-apply patches
//!   (apply merges), delete (a Namespace takes its objects with it), and the
//!   `status` subresource;
//! - TokenReview, answered from a table the test fills ([`ApiServer::add_token`]);
//! - `/version`.
//!
//! Plain HTTP on 127.0.0.1: kube-rs 5 wraps its connector in hyper-rustls
//! `https_or_http()`, so an `http://` server in the kubeconfig needs no TLS.
//! The test side ([`ApiServer::apply`], [`ApiServer::delete`]) writes as the
//! cluster's controllers and kubelet would (status included), each change
//! reaching open watches. Every request is logged; what the stand-in does
//! not serve (other paths and verbs, field and set-based selectors, dry
//! runs, other patch types) is refused and listed by
//! [`ApiServer::unexpected`], so a test can assert nothing went unserved.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Channel, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

/// A kind the stand-in serves.
#[derive(Debug)]
pub struct Kind {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
    /// Has a `status` subresource: writes to the object keep its status,
    /// writes to `/status` change nothing else.
    pub status: bool,
}

impl Kind {
    /// TokenReview and access reviews: created, answered, never stored.
    fn is_review(&self) -> bool {
        self.plural.ends_with("reviews")
    }

    /// How a real server names the resource in messages: `leases.coordination.k8s.io`.
    fn qualified(&self) -> String {
        match self.api_version.rsplit_once('/') {
            Some((group, _)) => format!("{}.{group}", self.plural),
            None => self.plural.to_owned(),
        }
    }
}

const fn kind(
    kind: &'static str,
    api_version: &'static str,
    plural: &'static str,
    namespaced: bool,
    status: bool,
) -> Kind {
    Kind {
        kind,
        api_version,
        plural,
        namespaced,
        status,
    }
}

/// Every kind served: what the control plane watches and writes (and
/// what `phoenix install` and `phoenix check` touch). Kind, apiVersion,
/// plural, namespaced, status subresource.
#[rustfmt::skip]
pub const KINDS: &[Kind] = &[
    kind("Namespace", "v1", "namespaces", false, true),
    kind("Service", "v1", "services", true, true),
    kind("Pod", "v1", "pods", true, true),
    kind("Secret", "v1", "secrets", true, false),
    kind("ConfigMap", "v1", "configmaps", true, false),
    kind("ServiceAccount", "v1", "serviceaccounts", true, false),
    kind("EndpointSlice", "discovery.k8s.io/v1", "endpointslices", true, false),
    kind("Lease", "coordination.k8s.io/v1", "leases", true, false),
    kind("Deployment", "apps/v1", "deployments", true, true),
    kind("NetworkPolicy", "networking.k8s.io/v1", "networkpolicies", true, false),
    kind("MutatingWebhookConfiguration", "admissionregistration.k8s.io/v1", "mutatingwebhookconfigurations", false, false),
    kind("CustomResourceDefinition", "apiextensions.k8s.io/v1", "customresourcedefinitions", false, true),
    kind("MeshConfig", "phoenix.dev/v1alpha1", "meshconfigs", false, true),
    kind("TrafficPolicy", "phoenix.dev/v1alpha1", "trafficpolicies", true, true),
    kind("HTTPRoute", "gateway.networking.k8s.io/v1", "httproutes", true, true),
    kind("GRPCRoute", "gateway.networking.k8s.io/v1", "grpcroutes", true, true),
    kind("ReferenceGrant", "gateway.networking.k8s.io/v1beta1", "referencegrants", true, false),
    kind("TokenReview", "authentication.k8s.io/v1", "tokenreviews", false, false),
    kind("SelfSubjectAccessReview", "authorization.k8s.io/v1", "selfsubjectaccessreviews", false, false),
];

fn by_kind(api_version: &str, kind: &str) -> Option<&'static Kind> {
    KINDS
        .iter()
        .find(|k| k.api_version == api_version && k.kind == kind)
}

/// A core kind by name.
fn kind_named(kind: &str) -> &'static Kind {
    by_kind("v1", kind).unwrap()
}

fn by_plural(api_version: &str, plural: &str) -> Option<&'static Kind> {
    KINDS
        .iter()
        .find(|k| k.api_version == api_version && k.plural == plural)
}

/// Where an object is stored; cluster-scoped objects have namespace `""`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    api_version: &'static str,
    plural: &'static str,
    namespace: String,
    name: String,
}

impl Key {
    fn new(kind: &'static Kind, namespace: &str, name: &str) -> Self {
        Self {
            api_version: kind.api_version,
            plural: kind.plural,
            namespace: if kind.namespaced { namespace } else { "" }.to_owned(),
            name: name.to_owned(),
        }
    }
}

/// One write, kept for watches that start from an older resourceVersion.
struct Change {
    rv: u64,
    key: Key,
    before: Option<Value>,
    after: Option<Value>,
}

/// Whose a bearer token is, for TokenReview.
struct TokenOwner {
    namespace: String,
    service_account: String,
    audiences: Vec<String>,
    uid: String,
}

/// An API error, as a `Status`; `unserved` marks a request the stand-in
/// does not know (listed by `unexpected()`), not one it refuses as a real
/// server would.
#[derive(Debug)]
struct Failure {
    code: u16,
    reason: &'static str,
    message: String,
    unserved: bool,
}

impl Failure {
    fn new(code: u16, reason: &'static str, message: String) -> Self {
        Self {
            code,
            reason,
            message,
            unserved: false,
        }
    }

    fn unserved(code: u16, reason: &'static str, what: &str) -> Self {
        Self {
            unserved: true,
            ..Self::new(
                code,
                reason,
                format!("the API stand-in does not serve {what}"),
            )
        }
    }

    fn not_found(kind: &Kind, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", kind.qualified()),
        )
    }

    fn body(&self) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": self.message, "reason": self.reason, "code": self.code})
    }
}

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// The test side: everything, status included.
    All,
    /// The object itself: its status is kept when it has a subresource.
    Main,
    /// The `status` subresource: nothing else.
    Status,
}

/// Everything behind the lock: objects, their history, tokens, the log.
struct Store {
    rv: u64,
    /// Watches from before this resourceVersion get 410 Gone.
    oldest: u64,
    /// Open watches deliver nothing while set (see `ApiServer::change_unwatched`).
    held: bool,
    /// Bumped to end every open watch.
    epoch: u64,
    objects: BTreeMap<Key, Value>,
    log: Vec<Change>,
    /// Tells open watches that `rv` moved.
    changed: tokio::sync::watch::Sender<u64>,
    tokens: HashMap<String, TokenOwner>,
    next_uid: u64,
    requests: Vec<String>,
    unexpected: Vec<String>,
}

impl Store {
    fn uid(&mut self) -> String {
        self.next_uid += 1;
        format!("5a1d0000-0000-4000-8000-{:012x}", self.next_uid)
    }

    /// The one place objects change: bumps the resourceVersion, stamps it,
    /// logs the change and wakes the watches.
    fn write(&mut self, key: Key, after: Option<Value>) -> Option<Value> {
        self.rv += 1;
        let after = after.map(|mut o| {
            o["metadata"]["resourceVersion"] = json!(self.rv.to_string());
            o
        });
        let before = match &after {
            Some(o) => self.objects.insert(key.clone(), o.clone()),
            None => self.objects.remove(&key),
        };
        self.log.push(Change {
            rv: self.rv,
            key,
            before,
            after: after.clone(),
        });
        self.changed.send_replace(self.rv);
        after
    }

    fn create(
        &mut self,
        kind: &'static Kind,
        namespace: &str,
        mut obj: Value,
    ) -> Result<Value, Failure> {
        not_an_object(&obj)?;
        let meta = &obj["metadata"];
        let name = match (meta["name"].as_str(), meta["generateName"].as_str()) {
            (Some(name), _) if !name.is_empty() => name.to_owned(),
            (_, Some(prefix)) => format!("{prefix}{:05x}", self.next_uid + 1),
            _ => {
                let message = "metadata.name or generateName is required".to_owned();
                return Err(Failure::new(422, "Invalid", message));
            }
        };
        let key = Key::new(kind, namespace, &name);
        if self.objects.contains_key(&key) {
            let message = format!("{} \"{name}\" already exists", kind.qualified());
            return Err(Failure::new(409, "AlreadyExists", message));
        }
        obj["apiVersion"] = json!(kind.api_version);
        obj["kind"] = json!(kind.kind);
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        let uid = self.uid();
        let meta = obj["metadata"].as_object_mut().unwrap();
        meta.insert("name".into(), json!(name));
        if kind.namespaced {
            meta.insert("namespace".into(), json!(key.namespace));
        }
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(now()));
        meta.insert("generation".into(), json!(1));
        meta.remove("resourceVersion");
        Ok(self.write(key, Some(obj)).unwrap())
    }

    /// Replaces the object at `key` with `next` (a PUT, or a patch applied):
    /// `part` says what may change; `check` refuses a stale resourceVersion.
    fn update(
        &mut self,
        kind: &'static Kind,
        key: Key,
        mut next: Value,
        part: Part,
        check: bool,
    ) -> Result<Value, Failure> {
        not_an_object(&next)?;
        let Some(current) = self.objects.get(&key).cloned() else {
            return Err(Failure::not_found(kind, &key.name));
        };
        let stated = next["metadata"]["resourceVersion"].as_str().unwrap_or("");
        if check && !stated.is_empty() && stated != current["metadata"]["resourceVersion"] {
            let message = format!(
                "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                kind.qualified(),
                key.name
            );
            return Err(Failure::new(409, "Conflict", message));
        }
        match part {
            Part::Status => {
                let status = next.get("status").cloned();
                next = current.clone();
                set(&mut next, "status", status);
            }
            Part::Main if kind.status => set(&mut next, "status", current.get("status").cloned()),
            _ => {}
        }
        next["apiVersion"] = json!(kind.api_version);
        next["kind"] = json!(kind.kind);
        for field in ["uid", "creationTimestamp", "generation"] {
            next["metadata"][field] = current["metadata"][field].clone();
        }
        next["metadata"]["name"] = json!(key.name);
        if kind.namespaced {
            next["metadata"]["namespace"] = json!(key.namespace);
        }
        // As a real server: the generation counts changes of the spec (of
        // anything but metadata and status).
        if content(&next) != content(&current) {
            let generation = current["metadata"]["generation"].as_i64().unwrap_or(0);
            next["metadata"]["generation"] = json!(generation + 1);
        }
        Ok(self.write(key, Some(next)).unwrap())
    }

    fn delete(&mut self, key: &Key) -> Option<Value> {
        let gone = self.objects.get(key).cloned()?;
        self.write(key.clone(), None);
        // A namespace takes its objects along (at once: no finalizers here).
        if key.api_version == "v1" && key.plural == "namespaces" {
            let inside: Vec<Key> = self
                .objects
                .keys()
                .filter(|k| k.namespace == key.name)
                .cloned()
                .collect();
            for k in inside {
                self.write(k, None);
            }
        }
        Some(gone)
    }

    fn list(&self, filter: &Filter) -> Value {
        let items: Vec<&Value> = self
            .objects
            .iter()
            .filter(|(k, o)| filter.matches(k, o))
            .map(|(_, o)| o)
            .collect();
        json!({"kind": format!("{}List", filter.kind.kind), "apiVersion": filter.kind.api_version,
               "metadata": {"resourceVersion": self.rv.to_string()}, "items": items})
    }

    /// Watch events for `filter` of the changes after `rv`.
    fn events_since(&self, rv: u64, filter: &Filter) -> Vec<Value> {
        let start = self.log.partition_point(|c| c.rv <= rv);
        self.log[start..]
            .iter()
            .filter_map(|c| filter.event(c))
            .collect()
    }

    /// Answers a TokenReview, or (any other review) allows everything.
    fn review(&self, kind: &Kind, request: Value) -> Value {
        let status = match kind.kind {
            "TokenReview" => self.token_review(&request["spec"]),
            _ => json!({"allowed": true}),
        };
        json!({"apiVersion": kind.api_version, "kind": kind.kind, "metadata": {},
               "spec": request["spec"], "status": status})
    }

    /// As a real server: the token's ServiceAccount, and the audiences asked
    /// for that the token has (its own when none are asked for); no common
    /// audience is a refusal. (No pod in `extra`: the control plane reads
    /// it but uses nothing of it.)
    fn token_review(&self, spec: &Value) -> Value {
        let wanted: Vec<&str> = spec["audiences"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let Some(owner) = self.tokens.get(spec["token"].as_str().unwrap_or("")) else {
            return json!({"authenticated": false, "error": "[invalid bearer token]"});
        };
        let audiences: Vec<&String> = owner
            .audiences
            .iter()
            .filter(|a| wanted.is_empty() || wanted.contains(&a.as_str()))
            .collect();
        if audiences.is_empty() {
            let error = format!(
                "[invalid bearer token, token audiences {:?} is invalid for the target audiences {wanted:?}]",
                owner.audiences
            );
            return json!({"authenticated": false, "error": error});
        }
        let (ns, sa) = (&owner.namespace, &owner.service_account);
        let account = self
            .objects
            .get(&Key::new(kind_named("ServiceAccount"), ns, sa));
        let uid = account
            .map_or(&json!(owner.uid), |a| &a["metadata"]["uid"])
            .clone();
        json!({"authenticated": true, "audiences": audiences, "user": {
            "username": format!("system:serviceaccount:{ns}:{sa}"), "uid": uid,
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"]}})
    }
}

/// Objects are JSON objects with object metadata (a body could be anything).
fn not_an_object(obj: &Value) -> Result<(), Failure> {
    match obj {
        Value::Object(o) if o.get("metadata").is_none_or(Value::is_object) => Ok(()),
        _ => Err(Failure::new(
            400,
            "BadRequest",
            "the body is not an object".into(),
        )),
    }
}

/// Sets `obj[field]`, or removes it for `None`.
fn set(obj: &mut Value, field: &str, value: Option<Value>) {
    if let Some(map) = obj.as_object_mut() {
        match value {
            Some(v) => map.insert(field.to_owned(), v),
            None => map.remove(field),
        };
    }
}

/// An object without metadata and status: what `generation` counts.
fn content(obj: &Value) -> Value {
    let mut o = obj.clone();
    set(&mut o, "metadata", None);
    set(&mut o, "status", None);
    o
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// One label requirement: `k=v` (or `k==v`), `k!=v`, `k`, `!k`.
#[derive(Debug)]
enum Requirement {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    Absent(String),
}

impl Requirement {
    /// `None` for a set-based term (`k in (a,b)`): not served.
    fn parse(term: &str) -> Option<Self> {
        let t = term.trim();
        let pair = |(k, v): (&str, &str)| (k.trim().to_owned(), v.trim().to_owned());
        Some(if t.contains('(') {
            return None;
        } else if let Some(kv) = t.split_once("!=") {
            let (k, v) = pair(kv);
            Self::Ne(k, v)
        } else if let Some(kv) = t.split_once("==").or_else(|| t.split_once('=')) {
            let (k, v) = pair(kv);
            Self::Eq(k, v)
        } else if let Some(k) = t.strip_prefix('!') {
            Self::Absent(k.trim().to_owned())
        } else {
            Self::Exists(t.to_owned())
        })
    }

    fn matches(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        match self {
            Self::Eq(k, v) => get(k) == Some(v),
            // As in a real server, an object without the label matches `k!=v`.
            Self::Ne(k, v) => get(k) != Some(v),
            Self::Exists(k) => get(k).is_some(),
            Self::Absent(k) => get(k).is_none(),
        }
    }
}

/// What a list or watch selects: a kind, maybe a namespace, labels.
struct Filter {
    kind: &'static Kind,
    namespace: Option<String>,
    labels: Vec<Requirement>,
}

impl Filter {
    /// Field selectors and set-based label selectors (which the control
    /// plane does not use) are answered 400 and listed as unexpected.
    fn new(
        kind: &'static Kind,
        namespace: Option<String>,
        query: &HashMap<String, String>,
    ) -> Result<Self, Failure> {
        if query.get("fieldSelector").is_some_and(|f| !f.is_empty()) {
            return Err(Failure::unserved(400, "BadRequest", "field selectors"));
        }
        let selector = query.get("labelSelector").map_or("", String::as_str);
        let labels = selector
            .split(',')
            .filter(|t| !t.trim().is_empty())
            .map(Requirement::parse)
            .collect::<Option<_>>()
            .ok_or_else(|| Failure::unserved(400, "BadRequest", "set-based label selectors"))?;
        Ok(Self {
            kind,
            namespace,
            labels,
        })
    }

    fn matches(&self, key: &Key, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        key.api_version == self.kind.api_version
            && key.plural == self.kind.plural
            && self.namespace.as_ref().is_none_or(|n| *n == key.namespace)
            && self.labels.iter().all(|r| r.matches(labels))
    }

    /// The watch event a change is for this filter: an object that stops
    /// matching is DELETED, one that starts is ADDED, as a real server says.
    fn event(&self, c: &Change) -> Option<Value> {
        let was = c.before.as_ref().is_some_and(|o| self.matches(&c.key, o));
        let is = c.after.as_ref().is_some_and(|o| self.matches(&c.key, o));
        let (kind, object) = match (was, is) {
            (false, true) => ("ADDED", c.after.clone()?),
            (true, true) => ("MODIFIED", c.after.clone()?),
            (true, false) => ("DELETED", {
                let mut o = c.after.clone().or_else(|| c.before.clone())?;
                o["metadata"]["resourceVersion"] = json!(c.rv.to_string());
                o
            }),
            (false, false) => return None,
        };
        Some(json!({"type": kind, "object": object}))
    }

    fn bookmark(&self, rv: u64, initial_events_end: bool) -> Value {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        json!({"type": "BOOKMARK", "object": {"kind": self.kind.kind,
               "apiVersion": self.kind.api_version, "metadata": metadata}})
    }
}

struct Shared {
    store: Mutex<Store>,
    /// The token the kubeconfig's user sends.
    bearer: String,
    addr: SocketAddr,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The stand-in API server; dropping it stops it.
pub struct ApiServer {
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiServer {
    /// Serves on 127.0.0.1 (an OS-assigned port) from a thread of its own.
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                rv: 0,
                oldest: 0,
                held: false,
                epoch: 0,
                objects: BTreeMap::new(),
                log: Vec::new(),
                changed: tokio::sync::watch::channel(0).0,
                tokens: HashMap::new(),
                next_uid: 0,
                requests: Vec::new(),
                unexpected: Vec::new(),
            }),
            bearer: format!("standin-{:016x}", rand::random::<u64>()),
            addr,
        });
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("apiserver".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                // Returning drops the runtime, and with it every connection
                // and open watch.
                runtime.block_on(serve(listener, s, stopped));
            })
            .unwrap();
        Self {
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Writes a kubeconfig (JSON, which kubeconfig readers accept) for this
    /// server with a bearer-token user, as `dir/kubeconfig.json`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig.json");
        let doc = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "standin", "cluster": {"server": format!("http://{}", self.addr())}}],
            "users": [{"name": "standin", "user": {"token": self.shared.bearer}}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "standin"}}],
            "current-context": "standin",
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
        path
    }

    /// Creates or replaces `obj` (its `apiVersion` and `kind` say where),
    /// status included; returns it as stored.
    pub fn apply(&self, obj: Value) -> Value {
        let (av, k) = (obj["apiVersion"].as_str(), obj["kind"].as_str());
        let kind = by_kind(av.unwrap_or(""), k.unwrap_or(""))
            .unwrap_or_else(|| panic!("the API stand-in does not know {av:?} {k:?}"));
        let namespace = obj["metadata"]["namespace"].as_str().unwrap_or("default");
        let name = obj["metadata"]["name"].as_str().expect("metadata.name");
        let key = Key::new(kind, namespace, name);
        let mut store = self.shared.lock();
        let stored = if store.objects.contains_key(&key) {
            store.update(kind, key, obj, Part::All, false)
        } else {
            let namespace = key.namespace.clone();
            store.create(kind, &namespace, obj)
        };
        stored.unwrap_or_else(|f| panic!("{}", f.message))
    }

    /// The object, if stored (`namespace` is ignored for cluster-scoped kinds).
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let kind = by_kind(api_version, kind)?;
        let store = self.shared.lock();
        store.objects.get(&Key::new(kind, namespace, name)).cloned()
    }

    /// Deletes the object (a Namespace with everything in it); what was deleted.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let kind = by_kind(api_version, kind)?;
        self.shared.lock().delete(&Key::new(kind, namespace, name))
    }

    /// Makes TokenReview authenticate `token` as the ServiceAccount
    /// `namespace/service_account`, for `audiences`.
    pub fn add_token(
        &self,
        token: &str,
        namespace: &str,
        service_account: &str,
        audiences: &[&str],
    ) {
        let mut store = self.shared.lock();
        let uid = store.uid();
        let owner = TokenOwner {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
            uid,
        };
        store.tokens.insert(token.to_owned(), owner);
    }

    /// Makes `changes` while no watch sees them, then forgets the history
    /// (as etcd compaction does) and ends every open watch (as an API server
    /// restart does): watchers come back with an older resourceVersion, get
    /// 410 Gone, and learn of the changes only by listing again.
    pub fn change_unwatched(&self, changes: impl FnOnce(&Self)) {
        self.shared.lock().held = true;
        changes(self);
        let mut store = self.shared.lock();
        store.held = false;
        store.oldest = store.rv;
        store.log.clear();
        store.epoch += 1;
        let rv = store.rv;
        store.changed.send_replace(rv);
    }

    /// Every request so far, as `VERB path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// Requests the stand-in does not serve (answered 400, 404, 405 or
    /// 415), and any without the kubeconfig's token (401).
    pub fn unexpected(&self) -> Vec<String> {
        self.shared.lock().unexpected.clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    loop {
        let tcp = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(_) => continue,
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            let io = hyper_util::rt::TokioIo::new(tcp);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

/// What a request gets: a JSON document, or a watch stream.
enum Answer {
    Json(u16, Value),
    Watch(Filter),
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let raw_query = req.uri().query().unwrap_or_default().to_owned();
    let line = match raw_query.as_str() {
        "" => format!("{method} {path}"),
        q => format!("{method} {path}?{q}"),
    };
    shared.lock().requests.push(line.clone());
    let header = |name| {
        let value = req.headers().get(name).and_then(|v| v.to_str().ok());
        value.unwrap_or_default().to_owned()
    };
    let content_type = header(CONTENT_TYPE);
    if header(AUTHORIZATION) != format!("Bearer {}", shared.bearer) {
        shared
            .lock()
            .unexpected
            .push(format!("{line} (no bearer token)"));
        return json_response(
            401,
            &Failure::new(401, "Unauthorized", "Unauthorized".into()).body(),
        );
    }
    let query = parse_query(&raw_query);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return json_response(400, &json!({})),
    };
    match answer(&shared, &method, &path, &query, &content_type, &body) {
        Ok(Answer::Json(code, doc)) => json_response(code, &doc),
        Ok(Answer::Watch(filter)) => watch(shared, filter, &query),
        Err(failure) => {
            if failure.unserved {
                shared.lock().unexpected.push(line);
            }
            json_response(failure.code, &failure.body())
        }
    }
}

/// The resource a path names.
struct Target {
    kind: &'static Kind,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

/// `/api/v1/...` or `/apis/<group>/<version>/...`, then `[namespaces/<ns>/]<plural>[/<name>[/status]]`.
fn route(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_version, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".to_owned(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, tail @ ..]
            if tail
                .first()
                .is_some_and(|p| by_plural(&api_version, p).is_some()) =>
        {
            (Some((*ns).to_owned()), tail)
        }
        _ => (None, rest),
    };
    let (plural, name, status) = match rest {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some((*name).to_owned()), false),
        [plural, name, "status"] => (*plural, Some((*name).to_owned()), true),
        _ => return None,
    };
    let kind = by_plural(&api_version, plural)?;
    // A namespaced kind's objects are only reached inside a namespace; a
    // cluster-scoped kind is never inside one.
    let scoped = match (kind.namespaced, &namespace) {
        (true, None) => name.is_none(),
        (false, Some(_)) => false,
        _ => true,
    };
    scoped.then_some(Target {
        kind,
        namespace,
        name,
        status,
    })
}

fn answer(
    shared: &Shared,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    content_type: &str,
    body: &[u8],
) -> Result<Answer, Failure> {
    let what = format!("{method} {path}");
    if *method == Method::GET && path == "/version" {
        return Ok(Answer::Json(200, version()));
    }
    let Some(Target {
        kind,
        namespace,
        name,
        status,
    }) = route(path)
    else {
        return Err(Failure::unserved(404, "NotFound", &what));
    };
    let ns = namespace.clone().unwrap_or_default();
    let part = if status { Part::Status } else { Part::Main };
    let mut store = shared.lock();
    let json = |code: u16, doc: Value| -> Result<Answer, Failure> { Ok(Answer::Json(code, doc)) };
    match (method.as_str(), name) {
        ("POST", None) if kind.is_review() => json(201, store.review(kind, parse(body)?)),
        _ if kind.is_review() => Err(Failure::unserved(405, "MethodNotAllowed", &what)),
        ("GET", None) if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) => {
            Ok(Answer::Watch(Filter::new(kind, namespace, query)?))
        }
        ("GET", None) => json(200, store.list(&Filter::new(kind, namespace, query)?)),
        ("GET", Some(name)) => match store.objects.get(&Key::new(kind, &ns, &name)) {
            Some(obj) => json(200, obj.clone()),
            None => Err(Failure::not_found(kind, &name)),
        },
        ("POST", None) => {
            namespace_exists(&store, kind, &ns)?;
            if query.contains_key("dryRun") {
                return Err(Failure::unserved(400, "BadRequest", "dry runs"));
            }
            json(201, store.create(kind, &ns, parse(body)?)?)
        }
        ("PUT", Some(name)) => {
            let key = Key::new(kind, &ns, &name);
            json(200, store.update(kind, key, parse(body)?, part, true)?)
        }
        ("PATCH", Some(name)) => patch(&mut store, kind, &ns, &name, part, content_type, body),
        ("DELETE", Some(name)) if !status => match store.delete(&Key::new(kind, &ns, &name)) {
            Some(gone) => json(200, gone),
            None => Err(Failure::not_found(kind, &name)),
        },
        _ => Err(Failure::unserved(405, "MethodNotAllowed", &what)),
    }
}

/// Creating inside a namespace that does not exist is refused, as for real.
fn namespace_exists(store: &Store, kind: &Kind, namespace: &str) -> Result<(), Failure> {
    let namespaces = kind_named("Namespace");
    if kind.namespaced
        && !store
            .objects
            .contains_key(&Key::new(namespaces, "", namespace))
    {
        return Err(Failure::not_found(namespaces, namespace));
    }
    Ok(())
}

/// A PATCH: merge, JSON patch, or server-side apply (merged: no field
/// ownership; it creates the object when absent). Strategic merge, which
/// needs each kind's schema, is not served.
fn patch(
    store: &mut Store,
    kind: &'static Kind,
    ns: &str,
    name: &str,
    part: Part,
    content_type: &str,
    body: &[u8],
) -> Result<Answer, Failure> {
    let key = Key::new(kind, ns, name);
    let media = content_type.split(';').next().unwrap_or("").trim();
    let apply = media == "application/apply-patch+yaml";
    let patch = parse(body)?;
    let Some(mut next) = store.objects.get(&key).cloned() else {
        if apply && part == Part::Main {
            not_an_object(&patch)?;
            namespace_exists(store, kind, ns)?;
            let mut obj = patch;
            obj["metadata"]["name"] = json!(name);
            return Ok(Answer::Json(201, store.create(kind, ns, obj)?));
        }
        return Err(Failure::not_found(kind, name));
    };
    match media {
        "application/merge-patch+json" | "application/apply-patch+yaml" => {
            json_patch::merge(&mut next, &patch);
        }
        "application/json-patch+json" => {
            let ops: json_patch::Patch = serde_json::from_value(patch)
                .map_err(|e| Failure::new(400, "BadRequest", e.to_string()))?;
            json_patch::patch(&mut next, &ops.0)
                .map_err(|e| Failure::new(422, "Invalid", e.to_string()))?;
        }
        _ => return Err(Failure::unserved(415, "UnsupportedMediaType", content_type)),
    }
    Ok(Answer::Json(
        200,
        store.update(kind, key, next, part, true)?,
    ))
}

/// A request body: JSON (kube-rs sends JSON, even for apply patches).
fn parse(body: &[u8]) -> Result<Value, Failure> {
    serde_json::from_slice(body)
        .map_err(|e| Failure::new(400, "BadRequest", format!("cannot parse the body: {e}")))
}

/// A watch: events after the given resourceVersion (or every current
/// object, as ADDED, without one), one JSON line each, until `timeoutSeconds`.
fn watch(shared: Arc<Shared>, filter: Filter, query: &HashMap<String, String>) -> Response<Body> {
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(32);
    let flag = |name: &str| query.get(name).is_some_and(|v| v == "true");
    let (bookmarks, initial_events) = (flag("allowWatchBookmarks"), flag("sendInitialEvents"));
    let timeout = query.get("timeoutSeconds").and_then(|t| t.parse().ok());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout.unwrap_or(1800));
    let from = query
        .get("resourceVersion")
        .and_then(|v| v.parse::<u64>().ok());
    tokio::spawn(async move {
        let (mut changed, first, cursor, epoch) = {
            let store = shared.lock();
            let (changed, epoch) = (store.changed.subscribe(), store.epoch);
            match from.filter(|rv| *rv > 0) {
                Some(rv) if rv < store.oldest => {
                    let message = format!("too old resource version: {rv} ({})", store.oldest);
                    let gone = json!({"type": "ERROR", "object": Failure::new(410, "Expired", message).body()});
                    (changed, vec![gone], None, epoch)
                }
                Some(rv) => (changed, vec![], Some(rv), epoch),
                None => {
                    let list = store.list(&filter);
                    let mut events: Vec<Value> = list["items"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|o| json!({"type": "ADDED", "object": o}))
                        .collect();
                    if initial_events {
                        events.push(filter.bookmark(store.rv, true));
                    }
                    (changed, events, Some(store.rv), epoch)
                }
            }
        };
        for event in &first {
            if send(&mut tx, event).await.is_err() {
                return;
            }
        }
        let Some(mut cursor) = cursor else { return };
        loop {
            changed.borrow_and_update();
            let (events, rv) = {
                let store = shared.lock();
                match (store.epoch == epoch, store.held) {
                    (false, _) => return,
                    (true, true) => (vec![], cursor),
                    (true, false) => (store.events_since(cursor, &filter), store.rv),
                }
            };
            for event in &events {
                if send(&mut tx, event).await.is_err() {
                    return;
                }
            }
            cursor = rv;
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                () = tokio::time::sleep_until(deadline) => {
                    if bookmarks {
                        let _ = send(&mut tx, &filter.bookmark(cursor, false)).await;
                    }
                    return;
                }
            }
        }
    });
    let mut response = Response::new(body.boxed());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, "application/json".parse().unwrap());
    response
}

async fn send(tx: &mut http_body_util::channel::Sender<Bytes>, event: &Value) -> Result<(), ()> {
    let mut line = serde_json::to_vec(event).unwrap();
    line.push(b'\n');
    tx.send_data(Bytes::from(line)).await.map_err(drop)
}

fn json_response(code: u16, doc: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(doc.to_string())).boxed());
    *response.status_mut() = StatusCode::from_u16(code).unwrap();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, "application/json".parse().unwrap());
    response
}

/// The one discovery document asked for (by `phoenix check`, not the control plane).
fn version() -> Value {
    json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64"})
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Percent-decoding of a query component (`+` is a space).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b'+', _) => out.push(b' '),
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
