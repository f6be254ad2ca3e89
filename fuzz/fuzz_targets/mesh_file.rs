//! The mesh file's `routes:` (HTTPRoute/GRPCRoute in the Gateway API's
//! shape), the parser both modes check route specs with: after a fixed
//! mesh of three workloads, the input is the `routes:` section. Parsing
//! never panics; a file it accepts has weights within the spec's bound
//! and parents every one of which is served, and the index builds every
//! workload's view of it.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use phoenix_control_plane::index::{Registrations, own_resources};
use phoenix_control_plane::mesh::Mesh;
use phoenix_control_plane::mesh::routes::MAX_WEIGHT;

const MESH: &str = "\
trustDomain: td
workloads:
  - name: client
    upstreams: [{service: web, listen: 127.0.0.1:8080}, {service: echo, listen: 127.0.0.1:8081}]
  - name: web-v1
    serve: [{service: web, target: 127.0.0.1:9001}, {service: web-v1, target: 127.0.0.1:9001}]
  - name: web-v2
    serve: [{service: web-v2, target: 127.0.0.1:9002}, {service: echo, target: 127.0.0.1:9003, protocol: http2}]
routes:
";

fuzz_target!(|bytes: &[u8]| {
    let Ok(routes) = std::str::from_utf8(bytes) else {
        return;
    };
    let Ok(mesh) = Mesh::parse(&format!("{MESH}{routes}"), Path::new("mesh.yaml")) else {
        return;
    };
    for route in &mesh.routes {
        for rule in &route.rules {
            assert!(rule.backends.iter().all(|b| b.weight <= MAX_WEIGHT));
        }
        assert!(route.parents.iter().all(|p| mesh
            .workloads
            .values()
            .any(|w| w.serve.contains_key(p))));
    }
    let registrations = Registrations::new();
    for name in mesh.workloads.keys() {
        assert!(own_resources(&mesh, &registrations, name).is_some());
    }
});
