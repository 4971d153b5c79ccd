//! The other parsers that read operator or peer input: agent identifiers (both modes),
//! Go durations, destination policies and addresses, CIDRs.
#![no_main]
use konnectivity_config::GoDuration;
use konnectivity_config::identifiers::AgentIdentifiers;
use konnectivity_core::policy::DestinationPolicy;
use konnectivity_core::select::Cidr;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let _ = AgentIdentifiers::parse_server(&s);
    let _ = AgentIdentifiers::parse_agent(&s);
    if let Ok(d) = s.parse::<GoDuration>() {
        let _ = d.to_string();
    }
    let _ = Cidr::parse(&s);
    let items: Vec<String> = s.split(',').map(str::to_owned).collect();
    if let Ok(p) = DestinationPolicy::parse(&items, &items) {
        let _ = p.check_address(&s);
    }
    let _ = konnectivity_core::address::host_of(&s);
});
