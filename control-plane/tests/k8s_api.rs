//! kube-rs client behaviour against a scripted API server
//! (`tower_test::mock`, as kube-rs tests itself): list, watch, relist on
//! 410 Gone, API errors, TokenReview, and the CA root Secret. No cluster can
//! run here; the scripted server answers as the real one does, and each
//! test checks the requests it receives.
#![cfg(feature = "kubernetes")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Service;
use kube::client::Body;
use kube::runtime::watcher;
use kube::{Api, Client};
use phoenix_control_plane::ca::RootOrigin;
use phoenix_control_plane::k8s::ca_secret;
use phoenix_control_plane::k8s::index::Index;
use phoenix_control_plane::k8s::live::Live;
use phoenix_control_plane::k8s::records::ObjectKey;
use phoenix_control_plane::k8s::token_review::{ReviewError, Reviewer};
use phoenix_control_plane::k8s::watch;
use phoenix_control_plane::metrics::Metrics;
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

type Server = Handle<Request<Body>, Response<Body>>;

fn mock() -> (Client, Server) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

/// The next request, within a deadline (the watcher backs off between retries).
async fn next(server: &mut Server) -> (Request<Body>, SendResponse<Response<Body>>) {
    tokio::time::timeout(Duration::from_secs(20), server.next_request())
        .await
        .expect("the client made no request in time")
        .expect("the client hung up")
}

async fn body_json(req: Request<Body>) -> Value {
    let bytes = req.into_body().collect_bytes().await.unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn respond(send: SendResponse<Response<Body>>, status: StatusCode, body: Value) {
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
}

/// Another writer wins: the GET finds nothing, the create gets 409.
async fn lose_create_race(server: &mut Server) {
    let (_, send) = next(server).await;
    respond(send, StatusCode::NOT_FOUND, status_body(404, "NotFound"));
    let (_, send) = next(server).await;
    respond(
        send,
        StatusCode::CONFLICT,
        status_body(409, "AlreadyExists"),
    );
}

fn status_body(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("scripted {reason}"), "reason": reason, "code": code})
}

fn service(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"namespace": "shop", "name": name, "resourceVersion": "1"},
           "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}})
}

fn list(items: Vec<Value>, rv: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceList", "metadata": {"resourceVersion": rv}, "items": items})
}

/// Waits until `cond` holds, or fails after a deadline.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn watch_survives_api_errors_and_relists_after_410_gone() {
    let (client, mut server) = mock();
    let live = Arc::new(Live::new(Index::new("cluster.local", 1), &["Service"]));
    let metrics = Arc::new(Metrics::default());
    let task = tokio::spawn(watch::run(
        Api::<Service>::all(client),
        watcher::Config::default(),
        live.clone(),
        metrics.clone(),
    ));
    let has = |name: &str| live.read(|i| i.has_service(&ObjectKey::new("shop", name)));

    // The API server fails the first list: not ready, stale, retried.
    let (req, send) = next(&mut server).await;
    assert_eq!(req.method(), Method::GET);
    assert_eq!(req.uri().path(), "/api/v1/services");
    respond(
        send,
        StatusCode::INTERNAL_SERVER_ERROR,
        status_body(500, "InternalError"),
    );
    until("the failure to be recorded", || {
        !live.health.warnings(std::time::Instant::now()).is_empty()
    })
    .await;
    assert_eq!(
        live.health.unsynced().len(),
        1,
        "not synced before a list succeeds"
    );

    // The retry lists a and b, then watches from the list's version.
    let (req, send) = next(&mut server).await;
    assert!(!req.uri().query().unwrap_or("").contains("watch=true"));
    respond(
        send,
        StatusCode::OK,
        list(vec![service("a"), service("b")], "10"),
    );
    let (req, send) = next(&mut server).await;
    let query = req.uri().query().unwrap().to_owned();
    assert!(
        query.contains("watch=true") && query.contains("resourceVersion=10"),
        "{query}"
    );
    until("a and b", || has("a") && has("b")).await;
    assert!(live.health.unsynced().is_empty());
    assert!(
        live.health.warnings(std::time::Instant::now()).is_empty(),
        "healthy again"
    );

    // The watch says 410 Gone (history compacted): the watcher relists,
    // and b, deleted meanwhile, disappears.
    let gone = json!({"type": "ERROR", "object": status_body(410, "Expired")});
    send.send_response(
        Response::builder()
            .body(Body::from(format!("{gone}\n").into_bytes()))
            .unwrap(),
    );
    let (req, send) = next(&mut server).await;
    assert!(
        !req.uri().query().unwrap_or("").contains("watch=true"),
        "a relist, not a rewatch"
    );
    respond(send, StatusCode::OK, list(vec![service("a")], "20"));
    let (req, _hold) = next(&mut server).await;
    assert!(req.uri().query().unwrap().contains("resourceVersion=20"));
    until("b to be removed by the relist", || has("a") && !has("b")).await;
    task.abort();
}

#[tokio::test]
async fn token_review_asks_for_the_phoenix_audience_and_reads_the_answer() {
    let (client, mut server) = mock();
    let reviewer = Reviewer::new(client);
    let review = tokio::spawn({
        let r = reviewer.clone();
        async move { r.review("projected-token").await }
    });
    let (req, send) = next(&mut server).await;
    assert_eq!(req.method(), Method::POST);
    assert_eq!(
        req.uri().path(),
        "/apis/authentication.k8s.io/v1/tokenreviews"
    );
    let body = body_json(req).await;
    assert_eq!(body["spec"]["token"], "projected-token");
    assert_eq!(body["spec"]["audiences"], json!(["phoenix"]));
    let mut answer = body.clone();
    answer["status"] = json!({"authenticated": true, "audiences": ["phoenix"],
        "user": {"username": "system:serviceaccount:shop:web"}});
    respond(send, StatusCode::CREATED, answer);
    let who = review.await.unwrap().unwrap();
    assert_eq!(
        (who.namespace.as_str(), who.service_account.as_str()),
        ("shop", "web")
    );

    let review = tokio::spawn(async move { reviewer.review("old-token").await });
    let (req, send) = next(&mut server).await;
    let mut answer = body_json(req).await;
    answer["status"] =
        json!({"authenticated": false, "error": "[invalid bearer token, token has expired]"});
    respond(send, StatusCode::CREATED, answer);
    let e = review.await.unwrap().unwrap_err();
    assert!(matches!(e, ReviewError::Rejected { .. }));
    assert!(e.to_string().contains("token has expired"), "{e}");
}

fn secret_path() -> &'static str {
    "/api/v1/namespaces/phoenix-system/secrets/phoenix-ca"
}

#[tokio::test]
async fn the_ca_root_secret_is_created_once_and_reloaded_after() {
    let (client, mut server) = mock();
    let create = tokio::spawn({
        let c = client.clone();
        async move {
            ca_secret::load_or_create(
                c,
                "phoenix-system",
                "phoenix-ca",
                "cluster.local",
                Default::default(),
            )
            .await
        }
    });
    let (req, send) = next(&mut server).await;
    assert_eq!(
        (req.method(), req.uri().path()),
        (&Method::GET, secret_path())
    );
    respond(send, StatusCode::NOT_FOUND, status_body(404, "NotFound"));
    let (req, send) = next(&mut server).await;
    assert_eq!(req.method(), Method::POST);
    assert_eq!(
        req.uri().path(),
        "/api/v1/namespaces/phoenix-system/secrets"
    );
    let stored = body_json(req).await;
    assert!(stored["data"]["ca.crt"].is_string() && stored["data"]["ca.key"].is_string());
    respond(send, StatusCode::CREATED, stored.clone());
    let (created, origin) = create.await.unwrap().unwrap();
    assert_eq!(origin, RootOrigin::Generated);

    // The next start (or another replica) loads the same root.
    let load = tokio::spawn({
        let c = client.clone();
        async move {
            ca_secret::load_or_create(
                c,
                "phoenix-system",
                "phoenix-ca",
                "cluster.local",
                Default::default(),
            )
            .await
        }
    });
    let (_, send) = next(&mut server).await;
    respond(send, StatusCode::OK, stored.clone());
    let (loaded, origin) = load.await.unwrap().unwrap();
    assert_eq!(origin, RootOrigin::Loaded);
    assert_eq!(loaded.root_pem(), created.root_pem());

    // Two replicas racing: the loser's create gets 409 and it loads the winner's.
    let race = tokio::spawn(async move {
        ca_secret::load_or_create(
            client,
            "phoenix-system",
            "phoenix-ca",
            "cluster.local",
            Default::default(),
        )
        .await
    });
    lose_create_race(&mut server).await;
    let (req, send) = next(&mut server).await;
    assert_eq!(
        (req.method(), req.uri().path()),
        (&Method::GET, secret_path())
    );
    respond(send, StatusCode::OK, stored);
    let (winner, origin) = race.await.unwrap().unwrap();
    assert_eq!(origin, RootOrigin::Loaded);
    assert_eq!(winner.root_pem(), created.root_pem());
}

#[tokio::test]
async fn an_ml_dsa_mesh_keeps_an_ml_dsa_root_in_its_secret() {
    use phoenix_api::tls_policy::IdentityAlgorithm;
    let (client, mut server) = mock();
    let create = tokio::spawn({
        let c = client.clone();
        async move {
            ca_secret::load_or_create(
                c,
                "phoenix-system",
                "phoenix-ca",
                "cluster.local",
                IdentityAlgorithm::MlDsa65,
            )
            .await
        }
    });
    let (_, send) = next(&mut server).await;
    respond(send, StatusCode::NOT_FOUND, status_body(404, "NotFound"));
    let (req, send) = next(&mut server).await;
    assert_eq!(req.method(), Method::POST);
    let stored = body_json(req).await;
    respond(send, StatusCode::CREATED, stored.clone());
    let (created, origin) = create.await.unwrap().unwrap();
    assert_eq!(origin, RootOrigin::Generated);
    assert_eq!(created.algorithm(), IdentityAlgorithm::MlDsa65);
    // The Secret's certificate is an ML-DSA-65 root, and its key (which
    // rcgen alone cannot load) signs again after a restart, whatever the
    // MeshConfig says by then: a root keeps its algorithm until rotate-ca.
    let secret: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(stored.clone()).unwrap();
    let cert = secret.data.unwrap()["ca.crt"].0.clone();
    assert_eq!(
        phoenix_tls::spiffe::signer_algorithm(std::str::from_utf8(&cert).unwrap()),
        Some(IdentityAlgorithm::MlDsa65)
    );
    let load = tokio::spawn(async move {
        ca_secret::load_or_create(
            client,
            "phoenix-system",
            "phoenix-ca",
            "cluster.local",
            IdentityAlgorithm::EcdsaP256,
        )
        .await
    });
    let (_, send) = next(&mut server).await;
    respond(send, StatusCode::OK, stored);
    let (loaded, origin) = load.await.unwrap().unwrap();
    assert_eq!(origin, RootOrigin::Loaded);
    assert_eq!(loaded.algorithm(), IdentityAlgorithm::MlDsa65);
    assert_eq!(loaded.root_pem(), created.root_pem());
}

#[tokio::test]
async fn an_incomplete_ca_secret_is_refused_with_the_fix() {
    let (client, mut server) = mock();
    let load = tokio::spawn(async move {
        ca_secret::load_or_create(
            client,
            "phoenix-system",
            "phoenix-ca",
            "cluster.local",
            Default::default(),
        )
        .await
    });
    let (_, send) = next(&mut server).await;
    respond(
        send,
        StatusCode::OK,
        json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "phoenix-ca", "namespace": "phoenix-system"},
        "data": {"ca.crt": "AAAA"}}),
    );
    let e = load.await.unwrap().unwrap_err();
    assert!(e.to_string().contains("lacks ca.key"), "{e}");
}

#[tokio::test]
async fn a_root_rotation_is_written_conditionally_and_every_replica_reloads_it() {
    use k8s_openapi::api::core::v1::Secret;
    use phoenix_control_plane::ca::Ca;
    let (client, mut server) = mock();
    let ca = Ca::generate("cluster.local").unwrap();
    // The API's JSON, base64 and all, as k8s-openapi writes it.
    let data = |k: &str, v: &str| (k.to_owned(), k8s_openapi::ByteString(v.as_bytes().to_vec()));
    let mut stored = serde_json::to_value(Secret {
        data: Some([data("ca.crt", ca.root_pem()), data("ca.key", &ca.key_pem())].into()),
        ..Secret::default()
    })
    .unwrap();
    stored["metadata"] =
        json!({"name": "phoenix-ca", "namespace": "phoenix-system", "resourceVersion": "7"});
    stored["apiVersion"] = "v1".into();
    stored["kind"] = "Secret".into();

    // rotate-ca reads the Secret and replaces it with the version it read.
    let hour = Duration::from_secs(3600);
    let rotate = tokio::spawn({
        let c = client.clone();
        async move {
            ca_secret::rotate(
                c,
                "phoenix-system",
                "phoenix-ca",
                "cluster.local",
                Default::default(),
                hour,
                hour,
            )
            .await
        }
    });
    let (req, send) = next(&mut server).await;
    assert_eq!(
        (req.method(), req.uri().path()),
        (&Method::GET, secret_path())
    );
    respond(send, StatusCode::OK, stored.clone());
    let (req, send) = next(&mut server).await;
    assert_eq!(
        (req.method(), req.uri().path()),
        (&Method::PUT, secret_path())
    );
    let mut written = body_json(req).await;
    assert_eq!(
        written["metadata"]["resourceVersion"], "7",
        "conditional on what was read"
    );
    assert_eq!(
        written["data"]["ca.key"], stored["data"]["ca.key"],
        "the first root stays"
    );
    assert!(written["data"]["roots.json"].is_string());
    written["metadata"]["resourceVersion"] = "8".into();
    respond(send, StatusCode::OK, written.clone());
    let schedule = rotate.await.unwrap().unwrap();
    assert_eq!(schedule.roots().len(), 2);
    assert_eq!(schedule.roots()[0].ca.root_pem(), ca.root_pem());

    // A replica polling the Secret sees the new schedule once, then nothing new.
    let api: Api<Secret> = Api::namespaced(client.clone(), "phoenix-system");
    let mut seen = Some("7".to_owned());
    let poll = |api: Api<Secret>, mut seen: Option<String>| {
        tokio::spawn(async move {
            let r = ca_secret::reload(&api, "phoenix-system", "phoenix-ca", &mut seen).await;
            (r, seen)
        })
    };
    let task = poll(api.clone(), seen.clone());
    let (_, send) = next(&mut server).await;
    respond(send, StatusCode::OK, written.clone());
    let (reloaded, now_seen) = task.await.unwrap();
    let reloaded = reloaded
        .unwrap()
        .expect("a changed Secret yields its schedule");
    assert_eq!(reloaded.roots().len(), 2);
    seen = now_seen;
    assert_eq!(seen.as_deref(), Some("8"));
    let task = poll(api, seen);
    let (_, send) = next(&mut server).await;
    respond(send, StatusCode::OK, written.clone());
    assert!(task.await.unwrap().0.unwrap().is_none(), "unchanged");

    // A rotation racing another one loses on the write (409), and one
    // announced and not yet active refuses the next with why.
    let rotate = tokio::spawn({
        let c = client.clone();
        async move {
            ca_secret::rotate(
                c,
                "phoenix-system",
                "phoenix-ca",
                "cluster.local",
                Default::default(),
                hour,
                hour,
            )
            .await
        }
    });
    let (_, send) = next(&mut server).await;
    respond(send, StatusCode::OK, stored.clone());
    let (_, send) = next(&mut server).await;
    respond(send, StatusCode::CONFLICT, status_body(409, "Conflict"));
    assert!(matches!(
        rotate.await.unwrap(),
        Err(ca_secret::CaSecretError::Api { .. })
    ));
    let rotate = tokio::spawn(async move {
        ca_secret::rotate(
            client,
            "phoenix-system",
            "phoenix-ca",
            "cluster.local",
            Default::default(),
            hour,
            hour,
        )
        .await
    });
    let (_, send) = next(&mut server).await;
    respond(send, StatusCode::OK, written);
    let e = rotate.await.unwrap().unwrap_err();
    assert!(
        phoenix_runtime::process::error_chain(&e).contains("already in progress"),
        "{e}"
    );
}

#[tokio::test]
async fn the_webhook_ca_bundle_follows_the_mesh_roots() {
    use phoenix_control_plane::k8s::webhook_config::{WebhookConfigError, ensure_ca_bundle};
    let (client, mut server) = mock();
    let path = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/phoenix-proxy-injector";
    let config = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "phoenix-proxy-injector", "resourceVersion": "3"},
        "webhooks": [{
            "name": "inject.phoenix.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "clientConfig": {"service": {"name": "phoenix-control-plane", "namespace": "phoenix-system", "path": "/inject", "port": 9443}},
        }],
    });
    let bundle = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let task = tokio::spawn({
        let c = client.clone();
        async move { ensure_ca_bundle(c, "phoenix-proxy-injector", bundle).await }
    });
    let (req, send) = next(&mut server).await;
    assert_eq!((req.method(), req.uri().path()), (&Method::GET, path));
    respond(send, StatusCode::OK, config.clone());
    let (req, send) = next(&mut server).await;
    assert_eq!((req.method(), req.uri().path()), (&Method::PUT, path));
    let written = body_json(req).await;
    assert_eq!(
        written["metadata"]["resourceVersion"], "3",
        "conditional on what was read"
    );
    let ca_bundle: k8s_openapi::ByteString =
        serde_json::from_value(written["webhooks"][0]["clientConfig"]["caBundle"].clone()).unwrap();
    assert_eq!(ca_bundle.0, bundle.as_bytes());
    respond(send, StatusCode::OK, written.clone());
    assert!(task.await.unwrap().unwrap(), "changed");

    // Already current: read, nothing written.
    let task = tokio::spawn({
        let c = client.clone();
        async move { ensure_ca_bundle(c, "phoenix-proxy-injector", bundle).await }
    });
    let (_, send) = next(&mut server).await;
    respond(send, StatusCode::OK, written);
    assert!(!task.await.unwrap().unwrap());

    // Not installed: an error that says how to install it.
    let task =
        tokio::spawn(
            async move { ensure_ca_bundle(client, "phoenix-proxy-injector", bundle).await },
        );
    let (_, send) = next(&mut server).await;
    respond(send, StatusCode::NOT_FOUND, status_body(404, "NotFound"));
    let e = task.await.unwrap().unwrap_err();
    assert!(matches!(e, WebhookConfigError::Missing { .. }));
    assert!(e.to_string().contains("install the chart"), "{e}");
}

#[tokio::test]
async fn every_namespace_gets_the_mesh_roots_in_a_config_map() {
    use phoenix_control_plane::k8s::trust_bundle::ensure;
    let (client, mut server) = mock();
    let path = "/api/v1/namespaces/shop/configmaps/phoenix-trust-bundle";
    let old = "-----BEGIN CERTIFICATE-----\nOLD\n-----END CERTIFICATE-----\n";
    let new = "-----BEGIN CERTIFICATE-----\nNEW\n-----END CERTIFICATE-----\n";
    let run = |bundle: &'static str| {
        let c = client.clone();
        tokio::spawn(async move { ensure(c, "shop", bundle).await })
    };

    // Absent: created, with the roots under ca.crt.
    let task = run(old);
    let (req, send) = next(&mut server).await;
    assert_eq!((req.method(), req.uri().path()), (&Method::GET, path));
    respond(send, StatusCode::NOT_FOUND, status_body(404, "NotFound"));
    let (req, send) = next(&mut server).await;
    assert_eq!(
        (req.method(), req.uri().path()),
        (&Method::POST, "/api/v1/namespaces/shop/configmaps")
    );
    let mut created = body_json(req).await;
    assert_eq!(created["metadata"]["name"], "phoenix-trust-bundle");
    assert_eq!(created["data"]["ca.crt"], old);
    created["metadata"]["resourceVersion"] = json!("7");
    respond(send, StatusCode::CREATED, created.clone());
    assert!(task.await.unwrap().unwrap(), "created");

    // Current: read, nothing written.
    let task = run(old);
    let (_, send) = next(&mut server).await;
    respond(send, StatusCode::OK, created.clone());
    assert!(!task.await.unwrap().unwrap());

    // After a rotation: replaced, conditional on the version read.
    let task = run(new);
    let (_, send) = next(&mut server).await;
    respond(send, StatusCode::OK, created.clone());
    let (req, send) = next(&mut server).await;
    assert_eq!((req.method(), req.uri().path()), (&Method::PUT, path));
    let written = body_json(req).await;
    assert_eq!(written["metadata"]["resourceVersion"], "7");
    assert_eq!(written["data"]["ca.crt"], new);
    respond(send, StatusCode::OK, written);
    assert!(task.await.unwrap().unwrap());

    // Two writers creating at once: the loser reads what the winner wrote
    // (here an older leader's bundle) and replaces it; the 409 is no error,
    // and never taken as "already current".
    let task = run(new);
    lose_create_race(&mut server).await;
    let (req, send) = next(&mut server).await;
    assert_eq!((req.method(), req.uri().path()), (&Method::GET, path));
    respond(send, StatusCode::OK, created.clone());
    let (req, send) = next(&mut server).await;
    assert_eq!((req.method(), req.uri().path()), (&Method::PUT, path));
    let written = body_json(req).await;
    assert_eq!(written["data"]["ca.crt"], new);
    respond(send, StatusCode::OK, written.clone());
    assert!(
        task.await.unwrap().unwrap(),
        "the older bundle was replaced"
    );
    // The winner wrote the same bundle: read, nothing more written.
    let task = run(new);
    lose_create_race(&mut server).await;
    let (_, send) = next(&mut server).await;
    respond(send, StatusCode::OK, written);
    assert!(!task.await.unwrap().unwrap());

    // Forbidden (RBAC): an error naming the object.
    let task = run(new);
    let (_, send) = next(&mut server).await;
    respond(send, StatusCode::FORBIDDEN, status_body(403, "Forbidden"));
    let e = task.await.unwrap().unwrap_err();
    assert!(e.to_string().contains("shop/phoenix-trust-bundle"), "{e}");
}

/// Answers `req` if it is about the control plane's Lease (as a real API
/// server would: 404, then what was created or renewed); hands it back
/// otherwise.
async fn answer_lease(
    req: Request<Body>,
    send: SendResponse<Response<Body>>,
    lease: &mut Option<Value>,
) -> Option<(Request<Body>, SendResponse<Response<Body>>)> {
    let lease_path =
        "/apis/coordination.k8s.io/v1/namespaces/phoenix-system/leases/phoenix-control-plane";
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    match (method, path.as_str()) {
        (Method::GET, p) if p == lease_path => match lease {
            None => respond(send, StatusCode::NOT_FOUND, status_body(404, "NotFound")),
            Some(l) => respond(send, StatusCode::OK, l.clone()),
        },
        (Method::POST, "/apis/coordination.k8s.io/v1/namespaces/phoenix-system/leases") => {
            let mut body = body_json(req).await;
            assert_eq!(body["spec"]["holderIdentity"], "cp-0");
            body["metadata"]["resourceVersion"] = "1".into();
            *lease = Some(body.clone());
            respond(send, StatusCode::CREATED, body);
        }
        (Method::PUT, p) if p == lease_path => {
            let body = body_json(req).await;
            assert_eq!(
                body["metadata"]["resourceVersion"], "1",
                "renewals carry what was read"
            );
            *lease = Some(body.clone());
            respond(send, StatusCode::OK, body);
        }
        _ => return Some((req, send)),
    }
    None
}

/// Without the Gateway API's CRDs the API answers 404 for routes: the
/// kind counts as listed (the control plane is ready without routes), and
/// the watch keeps asking, so routes apply once the CRDs are installed.
#[tokio::test]
async fn route_watches_wait_for_the_gateway_api_crds_without_holding_readiness() {
    use phoenix_api::route::RouteKind;
    use phoenix_control_plane::gateway::HttpRoute;
    use phoenix_control_plane::k8s::routes::Raw;
    let (client, mut server) = mock();
    let live = Arc::new(Live::new(Index::new("cluster.local", 1), &["HTTPRoute"]));
    let task = tokio::spawn(watch::run(
        Api::<Raw<HttpRoute>>::all(client),
        watcher::Config::default(),
        live.clone(),
        Arc::new(Metrics::default()),
    ));
    let (req, send) = next(&mut server).await;
    assert_eq!(
        req.uri().path(),
        "/apis/gateway.networking.k8s.io/v1/httproutes"
    );
    respond(send, StatusCode::NOT_FOUND, status_body(404, "NotFound"));
    until("HTTPRoute to count as listed", || {
        live.health.unsynced().is_empty()
    })
    .await;
    assert!(
        live.health.warnings(std::time::Instant::now()).is_empty(),
        "a missing optional CRD is not a failing watch"
    );
    // The CRDs are installed: the next list has a route.
    let (_, send) = next(&mut server).await;
    let route = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"namespace": "shop", "name": "canary", "resourceVersion": "5"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                 "rules": [{"backendRefs": [{"name": "web-v2", "port": 80}]}]},
    });
    respond(send, StatusCode::OK, list(vec![route.clone()], "5"));
    let (_, send) = next(&mut server).await;
    until("the route in the index", || {
        live.read(|i| i.routes().count() == 1)
    })
    .await;
    // A route the v1.5.1 types cannot read (a filter of a newer release)
    // comes in a relist beside a good one: it is refused on its own, said
    // in its status; it holds nothing else back.
    let gone = json!({"type": "ERROR", "object": status_body(410, "Expired")});
    send.send_response(
        Response::builder()
            .body(Body::from(format!("{gone}\n").into_bytes()))
            .unwrap(),
    );
    let (_, send) = next(&mut server).await;
    let newer = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"namespace": "shop", "name": "newer", "resourceVersion": "6"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                 "rules": [{"filters": [{"type": "FutureFilter"}]}]},
    });
    respond(send, StatusCode::OK, list(vec![route, newer], "6"));
    let (_, send) = next(&mut server).await;
    until("both routes in the index", || {
        live.read(|i| i.routes().count() == 2)
    })
    .await;
    let verdicts = live.read(|i| {
        i.route_verdicts(&(RouteKind::Http, ObjectKey::new("shop", "newer")))
            .unwrap()
    });
    let (parent, conditions) = &verdicts[0];
    assert_eq!(parent.service, ObjectKey::new("shop", "web"));
    assert_eq!(conditions[0].reason.as_str(), "UnsupportedValue");
    assert!(
        conditions[0]
            .message
            .contains("not a Gateway API v1.5.1 spec"),
        "{}",
        conditions[0].message
    );
    // The CRDs are deleted: the API answers 404. One 404 (an API server
    // that has not loaded the CRD yet) keeps the routes; a persisting one
    // removes them.
    respond(send, StatusCode::NOT_FOUND, status_body(404, "NotFound"));
    let (_, send) = next(&mut server).await;
    assert_eq!(
        live.read(|i| i.routes().count()),
        2,
        "one 404 forgets nothing"
    );
    respond(send, StatusCode::NOT_FOUND, status_body(404, "NotFound"));
    let (_, send) = next(&mut server).await;
    respond(send, StatusCode::NOT_FOUND, status_body(404, "NotFound"));
    until("the routes to be removed", || {
        live.read(|i| i.routes().count() == 0)
    })
    .await;
    task.abort();
}

/// Route status is written under Phoenix's controller name, one entry per
/// parent Service, and another controller's entry is kept as it was.
#[tokio::test]
async fn the_leader_writes_route_status_beside_other_controllers() {
    use phoenix_api::route::RouteKind;
    use phoenix_control_plane::gateway::HttpRoute;
    use phoenix_control_plane::k8s::routes::RouteRecord;
    use phoenix_control_plane::k8s::{leader, status};

    let (client, mut server) = mock();
    let live = Arc::new(Live::new(Index::new("cluster.local", 1), &["HTTPRoute"]));
    let other = json!({"parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge"},
                       "controllerName": "example.com/gateway",
                       "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                       "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
    let route: HttpRoute = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"namespace": "shop", "name": "canary", "generation": 2, "resourceVersion": "7"},
        "spec": {"parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge"},
                                {"group": "", "kind": "Service", "name": "web", "port": 80}],
                 "rules": [{"backendRefs": [{"name": "web-v2", "port": 80}]}]},
        "status": {"parents": [other.clone()]},
    }))
    .unwrap();
    let key = ObjectKey::new("shop", "canary");
    live.apply(|i| {
        i.apply_route(
            RouteKind::Http,
            key.clone(),
            Some(RouteRecord::new(
                RouteKind::Http,
                "shop",
                &route.metadata,
                &route.spec,
            )),
        )
    });
    let (leading, lead) = tokio::sync::watch::channel(false);
    let elector = tokio::spawn(leader::run(
        client.clone(),
        "phoenix-system".into(),
        "cp-0".into(),
        leading,
    ));
    let writer = tokio::spawn(status::run(client, live.clone(), lead));
    let path = "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/canary";
    let mut lease: Option<Value> = None;
    let (mut gets, mut patches) = (0, 0);
    let patch = loop {
        let (req, send) = next(&mut server).await;
        let Some((req, send)) = answer_lease(req, send, &mut lease).await else {
            continue;
        };
        let (method, p) = (req.method().clone(), req.uri().path().to_owned());
        match method {
            Method::GET if p == path => {
                gets += 1;
                respond(send, StatusCode::OK, serde_json::to_value(&route).unwrap());
            }
            Method::PATCH if p == format!("{path}/status") => {
                patches += 1;
                let body = body_json(req).await;
                assert_eq!(
                    body["metadata"]["resourceVersion"], "7",
                    "the write is conditional on what was read"
                );
                if patches == 1 {
                    // Someone else wrote in between: read again, write again.
                    respond(send, StatusCode::CONFLICT, status_body(409, "Conflict"));
                    continue;
                }
                respond(send, StatusCode::OK, serde_json::to_value(&route).unwrap());
                break body;
            }
            m => panic!("unexpected call {m} {p}"),
        }
    };
    assert_eq!(
        (gets, patches),
        (2, 2),
        "a conflict is read again before it is written again"
    );
    let parents = patch["status"]["parents"].as_array().unwrap();
    assert_eq!(parents.len(), 2, "{parents:?}");
    assert_eq!(parents[0], other, "the other controller's entry, untouched");
    let ours = &parents[1];
    assert_eq!(ours["controllerName"], "phoenix.dev/mesh");
    assert_eq!(
        ours["parentRef"],
        json!({"group": "", "kind": "Service", "name": "web", "port": 80})
    );
    let conditions = ours["conditions"].as_array().unwrap();
    let by_type = |t: &str| conditions.iter().find(|c| c["type"] == t).unwrap().clone();
    // The Service is not in the index: the route waits for it.
    assert_eq!(by_type("Accepted")["status"], "False");
    assert_eq!(by_type("Accepted")["reason"], "NoMatchingParent");
    assert_eq!(by_type("ResolvedRefs")["reason"], "BackendNotFound");
    assert_eq!(by_type("Accepted")["observedGeneration"], 2);
    elector.abort();
    writer.abort();
}

#[tokio::test]
async fn the_leader_takes_the_lease_and_writes_policy_status() {
    use phoenix_control_plane::crd::TrafficPolicy;
    use phoenix_control_plane::k8s::policy::PolicyRecord;
    use phoenix_control_plane::k8s::{leader, status};

    let (client, mut server) = mock();
    let live = Arc::new(Live::new(
        Index::new("cluster.local", 1),
        &["TrafficPolicy"],
    ));
    let tp: TrafficPolicy = serde_json::from_value(json!({
        "apiVersion": "phoenix.dev/v1alpha1", "kind": "TrafficPolicy",
        "metadata": {"namespace": "shop", "name": "db", "generation": 3},
        "spec": {"targetRef": {"kind": "Service", "name": "db"}},
    }))
    .unwrap();
    let key = ObjectKey::new("shop", "db");
    live.apply(|i| {
        i.apply_policy(
            key.clone(),
            Some(PolicyRecord {
                generation: Some(3),
                ..PolicyRecord::new(&key, &tp.spec, 0)
            }),
        )
    });
    let (leading, mut lead) = tokio::sync::watch::channel(false);
    let elector = tokio::spawn(leader::run(
        client.clone(),
        "phoenix-system".into(),
        "cp-0".into(),
        leading,
    ));
    let writer = tokio::spawn(status::run(client, live.clone(), lead.clone()));

    // A scripted API server: the Lease and the status subresource.
    let mut lease: Option<Value> = None;
    let status_patch = loop {
        let (req, send) = next(&mut server).await;
        let Some((req, send)) = answer_lease(req, send, &mut lease).await else {
            continue;
        };
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        match (method, path.as_str()) {
            (
                Method::PATCH,
                "/apis/phoenix.dev/v1alpha1/namespaces/shop/trafficpolicies/db/status",
            ) => {
                let body = body_json(req).await;
                respond(send, StatusCode::OK, serde_json::to_value(&tp).unwrap());
                break body;
            }
            (m, p) => panic!("unexpected call {m} {p}"),
        }
    };
    assert!(
        *lead.borrow_and_update(),
        "status is written by the leader only"
    );
    assert_eq!(status_patch["status"]["observedGeneration"], 3);
    let conditions = status_patch["status"]["conditions"].as_array().unwrap();
    let by_type = |t: &str| conditions.iter().find(|c| c["type"] == t).unwrap().clone();
    assert_eq!(by_type("Accepted")["status"], "True");
    assert_eq!(by_type("ResolvedRefs")["status"], "False");
    assert_eq!(by_type("ResolvedRefs")["reason"], "ServiceNotFound");
    elector.abort();
    writer.abort();
}

/// `phoenix check` against a scripted cluster: every check asks the API
/// what a real one would answer, and reports the failure with its fix.
#[tokio::test]
async fn phoenix_check_reports_each_problem_with_its_fix() {
    use phoenix_control_plane::k8s::check::{self, Status};
    let (client, mut server) = mock();
    let api = tokio::spawn(async move {
        while let Ok(Some((req, send))) =
            tokio::time::timeout(Duration::from_secs(10), server.next_request()).await
        {
            let path = req.uri().path().to_owned();
            let query = req.uri().query().unwrap_or("").to_owned();
            let ok = |body: Value| (StatusCode::OK, body);
            let (status, body) = match (req.method().as_str(), path.as_str()) {
                ("GET", "/version") => ok(json!({
                    "major": "1", "minor": "33", "gitVersion": "v1.33.1", "gitCommit": "x",
                    "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                    "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"})),
                (
                    "GET",
                    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/meshconfigs.phoenix.dev",
                ) => ok(json!({
                    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                    "metadata": {"name": "meshconfigs.phoenix.dev"},
                    "spec": {"group": "phoenix.dev", "scope": "Cluster",
                             "names": {"plural": "meshconfigs", "kind": "MeshConfig"}, "versions": []}})),
                (
                    "GET",
                    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/trafficpolicies.phoenix.dev",
                ) => (StatusCode::NOT_FOUND, status_body(404, "NotFound")),
                (
                    "GET",
                    "/apis/apps/v1/namespaces/phoenix-system/deployments/phoenix-control-plane",
                ) => ok(json!({
                    "apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": "phoenix-control-plane", "namespace": "phoenix-system"},
                    "spec": {"replicas": 2, "selector": {}, "template": {}},
                    "status": {"readyReplicas": 1}})),
                (
                    "GET",
                    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/phoenix-proxy-injector",
                ) => ok(json!({
                    "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
                    "metadata": {"name": "phoenix-proxy-injector"},
                    "webhooks": [{"name": "inject.phoenix.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                                  "clientConfig": {"service": {"name": "phoenix-control-plane", "namespace": "phoenix-system"}}}]})),
                ("POST", "/api/v1/namespaces/default/pods") => {
                    assert!(
                        query.contains("dryRun=All"),
                        "the check never creates a pod: {query}"
                    );
                    ok(
                        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "phoenix-check-x"},
                              "spec": {"initContainers": [{"name": "phoenix-init"}, {"name": "phoenix-proxy"}],
                                       "containers": [{"name": "check"}]}}),
                    )
                }
                ("GET", "/apis/phoenix.dev/v1alpha1/meshconfigs/default") => ok(json!({
                    "apiVersion": "phoenix.dev/v1alpha1", "kind": "MeshConfig", "metadata": {"name": "default"},
                    "spec": {"trustDomain": "cluster.local"}})),
                ("GET", "/api/v1/pods") => ok(json!({
                    "apiVersion": "v1", "kind": "PodList", "metadata": {},
                    "items": [{"metadata": {"name": "web-0", "namespace": "shop", "labels": {"app": "web", "phoenix.dev/meshed": "true"}},
                               "spec": {"containers": []},
                               "status": {"initContainerStatuses": [{"name": "phoenix-proxy", "ready": true, "restartCount": 0, "image": "p", "imageID": ""}]}}]})),
                // A DNS Service beside the meshed pod: its UDP port is not
                // meshed; one in a namespace without meshed pods is not
                // the mesh's business.
                ("GET", "/api/v1/services") => ok(json!({
                    "apiVersion": "v1", "kind": "ServiceList", "metadata": {},
                    "items": [
                        {"metadata": {"name": "dns", "namespace": "shop"},
                         "spec": {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}},
                        {"metadata": {"name": "web", "namespace": "shop"},
                         "spec": {"ports": [{"port": 80}]}},
                        {"metadata": {"name": "syslog", "namespace": "ops"},
                         "spec": {"ports": [{"port": 514, "protocol": "UDP"}]}}]})),
                // A policy written for the app's TCP port: QUIC is not let in.
                ("GET", "/apis/networking.k8s.io/v1/networkpolicies") => ok(json!({
                    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicyList", "metadata": {},
                    "items": [{"metadata": {"name": "web-http", "namespace": "shop"},
                               "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                                        "ingress": [{"ports": [{"protocol": "TCP", "port": 8080}]}]}}]})),
                ("GET", "/api/v1/namespaces/shop/pods/web-0:4191/proxy/metrics") => {
                    send.send_response(Response::builder().status(StatusCode::OK).body(Body::from(
                        "tls_handshakes_total{side=\"client\",kx_group=\"X25519MLKEM768\",result=\"success\"} 5\n\
                         tls_handshake_failures_total{side=\"client\",reason=\"timeout\"} 2\n".as_bytes().to_vec(),
                    )).unwrap());
                    continue;
                }
                // Gateway API installed; one route Phoenix refused, one in force.
                (
                    "GET",
                    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/httproutes.gateway.networking.k8s.io"
                    | "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/grpcroutes.gateway.networking.k8s.io"
                    | "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/referencegrants.gateway.networking.k8s.io",
                ) => ok(json!({
                    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                    "metadata": {"name": path.rsplit('/').next().unwrap()},
                    "spec": {"group": "gateway.networking.k8s.io", "scope": "Namespaced",
                             "names": {"plural": "x", "kind": "X"},
                             "versions": [{"name": "v1", "served": true, "storage": true},
                                          {"name": "v1beta1", "served": true, "storage": false}]}})),
                ("GET", "/apis/gateway.networking.k8s.io/v1/httproutes") => {
                    let route = |name: &str, accepted: (&str, &str, &str)| {
                        json!({
                            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                            "metadata": {"name": name, "namespace": "shop"},
                            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}]},
                            "status": {"parents": [{"parentRef": {"group": "", "kind": "Service", "name": "web"},
                                "controllerName": "phoenix.dev/mesh",
                                "conditions": [{"type": "Accepted", "status": accepted.0, "reason": accepted.1,
                                                "message": accepted.2, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}]},
                        })
                    };
                    ok(
                        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRouteList", "metadata": {},
                              "items": [route("canary", ("True", "Accepted", "in force")),
                                        route("rewrite", ("False", "UnsupportedValue", "the URLRewrite filter is not supported"))]}),
                    )
                }
                ("GET", "/apis/gateway.networking.k8s.io/v1/grpcroutes") => ok(json!({
                    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRouteList", "metadata": {}, "items": []})),
                other => panic!("unexpected request {other:?}"),
            };
            respond(send, status, body);
        }
    });
    let report = check::run(client, "phoenix-system", false).await;
    let status = |check: &str| {
        report
            .outcomes
            .iter()
            .find(|o| o.check == check)
            .unwrap_or_else(|| panic!("no check {check:?} in {report:?}"))
            .clone()
    };
    assert_eq!(status("can reach the Kubernetes API").status, Status::Ok);
    assert_eq!(status("Kubernetes has native sidecars").status, Status::Ok);
    let crds = status("the CRDs are installed");
    assert_eq!(crds.status, Status::Fail);
    assert!(
        crds.detail.contains("trafficpolicies.phoenix.dev")
            && crds.detail.contains("helm install phoenix-crds")
    );
    assert_eq!(status("the control plane is ready").status, Status::Warn);
    let webhook = status("the injection webhook is configured");
    assert_eq!(webhook.status, Status::Fail);
    assert!(webhook.detail.contains("caBundle is empty"));
    assert_eq!(
        status("the webhook injects pods (server-side dry run)").status,
        Status::Ok
    );
    let mode = status("inbound mode is strict");
    assert_eq!(mode.status, Status::Warn);
    assert!(mode.detail.contains("inboundMode: strict"));
    assert_eq!(status("every proxy is ready").status, Status::Ok);
    let pq = status("proxies' handshakes are post-quantum (X25519MLKEM768)");
    assert_eq!(
        (pq.status, pq.detail.as_str()),
        (Status::Ok, "X25519MLKEM768: 5")
    );
    let policies = status("NetworkPolicies let proxies reach each other (UDP 4143)");
    assert_eq!(policies.status, Status::Fail);
    assert!(
        policies
            .detail
            .contains("shop/web-0 (ingress UDP 4143: shop/web-http)")
            && policies.detail.contains("protocol: UDP"),
        "{}",
        policies.detail
    );
    let clear = status("no UDP Service port of a meshed namespace passes in clear");
    assert_eq!(clear.status, Status::Warn);
    assert!(
        clear.detail.starts_with("shop/dns:53/UDP: ") && !clear.detail.contains("syslog"),
        "{}",
        clear.detail
    );
    let udp = status("proxies reach each other over UDP");
    assert_eq!(udp.status, Status::Warn);
    assert!(udp.detail.contains("UDP 4143"));
    let routes = status("every mesh route is accepted");
    assert_eq!(routes.status, Status::Fail);
    assert!(
        routes
            .detail
            .contains("HTTPRoute shop/rewrite: Accepted UnsupportedValue (the URLRewrite filter")
            && !routes.detail.contains("canary"),
        "{}",
        routes.detail
    );
    assert!(report.failed());
    let text = report.render();
    assert!(
        text.contains("× the CRDs are installed") && text.contains("Status check results are ×"),
        "{text}"
    );
    drop(report);
    api.abort();
}
