//! `hyperctl status` and `hyperctl gpus`.

use std::fmt::Write as _;

use hyperllama_proto::v1 as pb;

use crate::client::Client;
use crate::error::Result;
use crate::format::{binary_size, size, table};

/// Renders the daemon's status.
pub async fn status(client: &mut Client, json: bool) -> Result<String> {
    let s = client.status(pb::StatusRequest {}).await?.into_inner();
    if json {
        return Ok(status_json(&s) + "\n");
    }
    let mut out = String::new();
    let state = if s.accepting { "ready" } else { "draining (shutting down)" };
    let _ = writeln!(out, "hyperllamad {} — {state}", s.version);
    let _ = writeln!(
        out,
        "  mode:        {} (pid {}, up {}s, running as {})",
        s.mode, s.pid, s.uptime_seconds, s.service_user
    );
    let _ = writeln!(out, "  socket:      {}", s.control_socket);
    let _ = writeln!(out, "  state:       {}", s.state_dir);
    let caps = if s.capabilities.is_empty() { "none".to_string() } else { s.capabilities.join(", ") };
    let _ = writeln!(out, "  capabilities: {caps}");
    if let Some(c) = &s.caller {
        let role = if c.admin { "admin" } else { "user" };
        let _ = writeln!(out, "  you:         {} (uid {}, {role})", c.user, c.uid);
    }
    let _ = writeln!(out, "  requests:    {} in flight", s.requests_in_flight);
    let _ = writeln!(out, "  models:      {} loaded, {} broken", s.loaded_models.len(), s.broken_models);
    out.push_str("  engines:\n");
    for e in &s.engines {
        let mark = if e.available { "available" } else { "unavailable" };
        let _ = writeln!(out, "    {:<10} {mark}: {}", e.name, e.detail);
    }
    if s.gpus.is_empty() {
        let why = if s.gpu_probe_error.is_empty() { "none found" } else { s.gpu_probe_error.as_str() };
        let _ = writeln!(out, "  gpus:        {why}");
    } else {
        out.push_str("  gpus:\n");
        for g in &s.gpus {
            let _ = writeln!(
                out,
                "    {} {} ({} free of {})",
                g.index,
                g.name,
                size(g.free_bytes),
                size(g.total_bytes)
            );
        }
    }
    if let Some(h) = &s.huge_pages {
        let _ = writeln!(
            out,
            "  huge pages:  {} of {} free ({} pages), transparent: {}",
            h.free_pages,
            h.total_pages,
            binary_size(h.page_size_bytes),
            if h.transparent_mode.is_empty() { "unknown" } else { &h.transparent_mode }
        );
    }
    Ok(out)
}

fn status_json(s: &pb::StatusResponse) -> String {
    let engines: Vec<_> = s
        .engines
        .iter()
        .map(|e| serde_json::json!({"name": e.name, "available": e.available, "detail": e.detail}))
        .collect();
    let gpus: Vec<_> = s
        .gpus
        .iter()
        .map(|g| serde_json::json!({"index": g.index, "name": g.name, "total_bytes": g.total_bytes, "free_bytes": g.free_bytes, "compute_capability": g.compute_capability, "numa_node": g.numa_node}))
        .collect();
    let caller =
        s.caller.as_ref().map(|c| serde_json::json!({"uid": c.uid, "user": c.user, "admin": c.admin}));
    let pages = s.huge_pages.as_ref().map(|h| serde_json::json!({"page_size_bytes": h.page_size_bytes, "total_pages": h.total_pages, "free_pages": h.free_pages, "transparent_mode": h.transparent_mode}));
    serde_json::json!({
        "version": s.version, "mode": s.mode, "pid": s.pid, "uptime_seconds": s.uptime_seconds,
        "accepting": s.accepting, "requests_in_flight": s.requests_in_flight,
        "service_user": s.service_user, "capabilities": s.capabilities, "state_dir": s.state_dir,
        "control_socket": s.control_socket, "engines": engines, "gpus": gpus,
        "gpu_probe_error": s.gpu_probe_error, "huge_pages": pages, "caller": caller,
        "loaded_models": s.loaded_models.len(), "broken_models": s.broken_models,
    })
    .to_string()
}

/// Renders the GPU table.
pub async fn gpus(client: &mut Client) -> Result<String> {
    let s = client.status(pb::StatusRequest {}).await?.into_inner();
    if s.gpus.is_empty() {
        let why = if s.gpu_probe_error.is_empty() { "no GPU found" } else { s.gpu_probe_error.as_str() };
        return Ok(format!("{why}\n"));
    }
    let rows: Vec<Vec<String>> = s
        .gpus
        .iter()
        .map(|g| {
            let numa = if g.numa_node < 0 { "-".to_string() } else { g.numa_node.to_string() };
            vec![
                g.index.to_string(),
                g.name.clone(),
                size(g.total_bytes),
                size(g.free_bytes),
                g.compute_capability.clone(),
                numa,
                g.pci_bus_id.clone(),
            ]
        })
        .collect();
    Ok(table(&["INDEX", "NAME", "MEMORY", "FREE", "COMPUTE", "NUMA", "PCI"], &rows))
}
