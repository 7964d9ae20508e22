//! The HELP text of each metric family, by name. A family missing here is still
//! exported, with a HELP that says which field it comes from; the unit test in
//! `tests.rs` names such families so that they get a line here.

use alloc::format;
use alloc::string::String;

const HELP: &[(&str, &str)] = &[
    (
        "weft_info",
        "The appliance's version and control protocol (always 1).",
    ),
    ("weft_uptime_seconds", "Seconds since the appliance booted."),
    (
        "weft_configured",
        "1 once a configuration has been applied.",
    ),
    ("weft_heap_size_bytes", "Size of the appliance's heap."),
    ("weft_heap_used_bytes", "Heap bytes in use now."),
    (
        "weft_heap_peak_bytes",
        "Most heap bytes ever in use since boot.",
    ),
    ("weft_stack_size_bytes", "Size of the appliance's stack."),
    (
        "weft_stack_peak_bytes",
        "Most stack bytes ever in use since boot.",
    ),
    ("weft_nic_addresses", "Addresses configured on the NIC."),
    (
        "weft_nic_rx_packets_total",
        "Frames taken from the NIC's port, including those dropped later.",
    ),
    (
        "weft_nic_rx_bytes_total",
        "Bytes of the frames taken from the NIC's port.",
    ),
    (
        "weft_nic_tx_packets_total",
        "Frames the NIC's port accepted for transmission.",
    ),
    (
        "weft_nic_tx_bytes_total",
        "Bytes of the frames the NIC's port accepted.",
    ),
    (
        "weft_nic_drops_total",
        "Frames the NIC dropped before any stage, by reason.",
    ),
    (
        "weft_control_captures",
        "Packet captures running (weft ctl capture).",
    ),
    (
        "weft_control_connects_total",
        "Control-socket connections (greetings sent).",
    ),
    (
        "weft_control_lines_total",
        "Non-empty control lines received.",
    ),
    (
        "weft_control_requests_total",
        "Control lines that were valid requests.",
    ),
    (
        "weft_control_errors_total",
        "Error replies sent on the control socket.",
    ),
    (
        "weft_control_partial_discarded_total",
        "Partial lines discarded when a client disconnected.",
    ),
    (
        "weft_control_transfers_total",
        "Documents begun in parts (apply-begin).",
    ),
    (
        "weft_control_transfers_discarded_total",
        "Documents in parts dropped unfinished.",
    ),
    (
        "weft_overlay_node",
        "This node's number in the grid (label: its overlay address).",
    ),
    (
        "weft_overlay_drops_total",
        "Frames the overlay refused, by reason (not_vxlan: handed on, not lost).",
    ),
    (
        "weft_overlay_datapath_unknown_vlan_total",
        "Link frames tagged with a VLAN no network uses.",
    ),
    (
        "weft_overlay_datapath_appliance_flooded_total",
        "Frames of the appliance sent to every segment.",
    ),
    (
        "weft_overlay_underlay_arp_requests_total",
        "ARP requests sent for peers' underlay addresses.",
    ),
    (
        "weft_overlay_underlay_arp_learned_total",
        "Underlay addresses learned from ARP.",
    ),
    (
        "weft_overlay_underlay_arp_ignored_total",
        "Underlay ARP frames that taught nothing.",
    ),
    (
        "weft_overlay_underlay_neighbors",
        "Underlay neighbours resolved.",
    ),
    (
        "weft_overlay_network_fdb_entries",
        "Entries in the network's forwarding table.",
    ),
    (
        "weft_overlay_network_arp_entries",
        "Entries in the network's ARP suppression table.",
    ),
    (
        "weft_overlay_network_link_rx_total",
        "Frames the network took from the container link.",
    ),
    (
        "weft_overlay_network_appliance_rx_total",
        "Frames the network took from the appliance.",
    ),
    (
        "weft_overlay_network_uplink_rx_total",
        "Frames the network took from peers (decapsulated).",
    ),
    (
        "weft_overlay_network_link_tx_total",
        "Frames the network handed to the container link.",
    ),
    (
        "weft_overlay_network_appliance_tx_total",
        "Frames the network handed to the appliance.",
    ),
    (
        "weft_overlay_network_uplink_tx_total",
        "Frames the network sent to peers (encapsulated).",
    ),
    (
        "weft_overlay_network_flooded_total",
        "Frames replicated to every peer (broadcast, multicast, unknown unicast).",
    ),
    (
        "weft_overlay_network_filtered_total",
        "Frames that stayed on the segment they came from.",
    ),
    (
        "weft_overlay_network_arp_suppressed_total",
        "ARP requests answered from the ARP table.",
    ),
    (
        "weft_overlay_network_icmp_frag_needed_total",
        "ICMP fragmentation-needed sent for frames over the overlay MTU.",
    ),
    (
        "weft_overlay_network_learn_refused_total",
        "Source addresses not learned: the forwarding table was full.",
    ),
    (
        "weft_overlay_network_drops_total",
        "Frames of the network dropped, by reason.",
    ),
    (
        "weft_overlay_peer_neighbor_resolved",
        "1 when the peer's underlay MAC address is known.",
    ),
    (
        "weft_overlay_peer_tx_packets_total",
        "Packets sent to the peer (encapsulated).",
    ),
    (
        "weft_overlay_peer_tx_bytes_total",
        "Underlay bytes sent to the peer.",
    ),
    (
        "weft_overlay_peer_rx_packets_total",
        "Packets received from the peer (decapsulated).",
    ),
    (
        "weft_overlay_peer_rx_bytes_total",
        "Underlay bytes received from the peer.",
    ),
    (
        "weft_overlay_peer_no_neighbor_total",
        "Packets for the peer dropped: its underlay MAC was unknown.",
    ),
    (
        "weft_sleeve_sealed_messages_total",
        "Sleeve messages sealed.",
    ),
    (
        "weft_sleeve_sealed_frames_total",
        "Frames sealed into sleeve messages.",
    ),
    (
        "weft_sleeve_frames_batched_total",
        "Frames that shared a sleeve message with an earlier frame.",
    ),
    (
        "weft_sleeve_opened_messages_total",
        "Sleeve messages opened.",
    ),
    (
        "weft_sleeve_opened_frames_total",
        "Frames opened from sleeve messages.",
    ),
    (
        "weft_sleeve_seal_refused_total",
        "Frames that could not be sealed (never sent in clear).",
    ),
    (
        "weft_sleeve_drops_total",
        "Received sleeve messages refused, by reason.",
    ),
    (
        "weft_sleeve_peer_tx_epoch",
        "The key epoch this node seals under for the peer.",
    ),
    (
        "weft_sleeve_peer_rx_epoch",
        "The peer's key epoch this node opens under.",
    ),
    (
        "weft_sleeve_peer_rekeys_total",
        "Sending epochs started after the first.",
    ),
    (
        "weft_sleeve_peer_rx_epochs_installed_total",
        "Newer receiving epochs of the peer installed.",
    ),
    (
        "weft_sleeve_peer_rx_sessions_adopted_total",
        "New sessions of the peer adopted (it restarted).",
    ),
    (
        "weft_sleeve_peer_refused_total",
        "The peer's sleeve messages refused, by reason (replays, authentication failures, ...).",
    ),
    ("weft_dns_containers", "Containers registered in DNS."),
    (
        "weft_dns_in_flight_queries",
        "Forwarded queries waiting for an upstream.",
    ),
    ("weft_dns_tcp_connections", "DNS TCP connections open."),
    (
        "weft_dns_queries_total",
        "Client queries received (UDP and TCP).",
    ),
    (
        "weft_dns_queries_tcp_total",
        "Client queries received over TCP.",
    ),
    (
        "weft_dns_local_answers_total",
        "Outcome: authoritative answers with data.",
    ),
    (
        "weft_dns_nodata_total",
        "Outcome: authoritative NOERROR without data.",
    ),
    (
        "weft_dns_nxdomain_total",
        "Outcome: authoritative NXDOMAIN.",
    ),
    (
        "weft_dns_truncated_total",
        "Local replies sent truncated (TC=1).",
    ),
    (
        "weft_dns_forwarded_total",
        "Outcome: client queries handed to the forwarder.",
    ),
    (
        "weft_dns_upstream_queries_total",
        "Queries sent to an upstream (label upstream: to that one).",
    ),
    (
        "weft_dns_upstream_replies_total",
        "Upstream replies relayed to a client (label upstream: from that one).",
    ),
    (
        "weft_dns_upstream_timeouts_total",
        "Upstream attempts that timed out.",
    ),
    (
        "weft_dns_upstream_failures_total",
        "Forwarded queries every upstream failed (label upstream: attempts that one failed).",
    ),
    ("weft_dns_servfail_total", "Outcome: SERVFAIL replies."),
    (
        "weft_dns_forward_refused_total",
        "Queries answered SERVFAIL at once instead of being forwarded.",
    ),
    (
        "weft_dns_in_flight_full_total",
        "Queries refused: max_in_flight queries were pending.",
    ),
    ("weft_dns_formerr_total", "Outcome: FORMERR replies."),
    ("weft_dns_notimp_total", "Outcome: NOTIMP replies."),
    ("weft_dns_refused_total", "Outcome: REFUSED replies."),
    ("weft_dns_badvers_total", "Outcome: BADVERS replies."),
    (
        "weft_dns_drops_total",
        "DNS datagrams dropped without a reply, by reason.",
    ),
    (
        "weft_dns_socket_tcp_accepted_total",
        "DNS TCP connections accepted.",
    ),
    (
        "weft_dns_socket_tcp_idle_closed_total",
        "DNS TCP connections closed idle.",
    ),
    (
        "weft_dns_socket_tcp_aborted_total",
        "DNS TCP connections aborted.",
    ),
    (
        "weft_dns_socket_reply_undeliverable_total",
        "DNS replies with nowhere to go.",
    ),
    (
        "weft_dns_socket_upstream_unsendable_total",
        "Forwarded queries that could not be sent.",
    ),
    (
        "weft_dns_socket_upstream_reset_total",
        "Upstream TCP attempts refused or reset.",
    ),
    (
        "weft_dns_socket_upstream_unreachable_total",
        "Upstream attempts answered by ICMP unreachable.",
    ),
    (
        "weft_nat_published_ports",
        "Ports published on the uplink address.",
    ),
    (
        "weft_nat_snat_ports_used",
        "Masquerade mappings (external ports) in use.",
    ),
    (
        "weft_nat_snat_ports_available",
        "External ports masquerade has per protocol.",
    ),
    ("weft_nat_translated_total", "Packets translated."),
    (
        "weft_nat_dnat_flows_total",
        "Flows created to published ports and service VIPs.",
    ),
    ("weft_nat_snat_flows_total", "Masqueraded flows created."),
    ("weft_nat_hairpin_flows_total", "Hairpinned flows created."),
    (
        "weft_nat_icmp_errors_translated_total",
        "ICMP errors translated back for a flow.",
    ),
    (
        "weft_nat_drops_total",
        "Packets the NAT dropped, by reason.",
    ),
    (
        "weft_conntrack_flows",
        "Flows in the connection-tracking table.",
    ),
    (
        "weft_conntrack_capacity_flows",
        "Flows the connection-tracking table holds at most.",
    ),
    (
        "weft_conntrack_inserts_total",
        "Flows inserted in the connection-tracking table.",
    ),
    (
        "weft_conntrack_expired_total",
        "Flows removed by their idle timeout.",
    ),
    (
        "weft_conntrack_evicted_total",
        "Flows evicted to make room.",
    ),
    (
        "weft_conntrack_removed_total",
        "Flows removed by configuration (a backend or service gone).",
    ),
    (
        "weft_conntrack_refused_full_total",
        "Insertions refused: the table was full.",
    ),
    (
        "weft_conntrack_refused_clash_total",
        "Insertions refused: the tuple clashed with a flow.",
    ),
    (
        "weft_conntrack_tcp_invalid_total",
        "TCP segments invalid for their flow's state.",
    ),
    (
        "weft_router_forwarded_total",
        "Translated frames sent out of a NIC.",
    ),
    (
        "weft_router_ttl_expired_total",
        "Frames dropped: the TTL would reach zero.",
    ),
    (
        "weft_router_time_exceeded_sent_total",
        "ICMP time exceeded sent back.",
    ),
    (
        "weft_router_icmp_rate_limited_total",
        "ICMP errors not sent: rate limit.",
    ),
    ("weft_router_no_route_total", "Frames dropped: no route."),
    (
        "weft_router_unresolved_total",
        "Frames dropped: the next hop's MAC stayed unknown.",
    ),
    (
        "weft_router_arp_requests_total",
        "ARP requests the router sent for next hops.",
    ),
    (
        "weft_router_tx_full_total",
        "Frames the port refused (queue full).",
    ),
    (
        "weft_router_routed_into_overlay_total",
        "Translated frames sent into an overlay network.",
    ),
    (
        "weft_router_from_remote_total",
        "Frames the router took that a peer delivered.",
    ),
    (
        "weft_lb_service_backends",
        "Backends configured for the service.",
    ),
    (
        "weft_lb_backend_up",
        "1 when the backend is healthy (always without a health table).",
    ),
    (
        "weft_lb_backend_weight",
        "The backend's weight (0: draining).",
    ),
    (
        "weft_lb_backend_slots",
        "Maglev table slots the backend holds (its share of new connections).",
    ),
    (
        "weft_lb_backend_connections",
        "Connections open to the backend now.",
    ),
    (
        "weft_lb_backend_checks_ok_total",
        "Health checks of the backend that succeeded.",
    ),
    (
        "weft_lb_backend_checks_failed_total",
        "Health checks of the backend that failed (timeouts included).",
    ),
];

/// The family's HELP text (`None` when it has no line here).
pub fn known(name: &str) -> Option<&'static str> {
    HELP.iter().find(|(n, _)| *n == name).map(|(_, h)| *h)
}

/// The family's HELP text, or one that names the counter it comes from.
pub fn of(name: &str) -> String {
    match known(name) {
        Some(h) => h.into(),
        None => format!("weft counter {name} (see `weft ctl status`)."),
    }
}
