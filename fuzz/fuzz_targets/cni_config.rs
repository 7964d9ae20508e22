//! Arbitrary bytes as the network configuration a runtime writes on the CNI plugin's
//! stdin (with the first line, when there is more, as `CNI_ARGS`): parsing never
//! panics; a refusal is one of the spec's error codes with a message and prints as the
//! spec's error object; an accepted config holds only what the plugin can act on (a
//! spoken version, an absolute agent socket, an interface name as bridge, ports
//! 1..=65535). VERSION answers any input with a version it speaks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_cni::config::parse;
use weft_cni::spec::{code, valid_ifname, Env, SUPPORTED_VERSIONS};

/// The codes a config or an environment may be refused with.
const CODES: &[u32] = &[
    code::INCOMPATIBLE_VERSION,
    code::UNSUPPORTED_FIELD,
    code::INVALID_ENV,
    code::DECODING_FAILURE,
    code::INVALID_CONFIG,
];

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(c) => {
            assert!(SUPPORTED_VERSIONS.contains(&c.cni_version.as_str()));
            assert!(c.name.bytes().all(|b| b.is_ascii_graphic()) && !c.name.is_empty());
            assert!(c.agent.is_absolute());
            assert!(valid_ifname(&c.bridge));
            for pm in &c.port_mappings {
                assert!(pm.host_port != 0 && pm.container_port != 0);
            }
        }
        Err(e) => {
            assert!(CODES.contains(&e.code), "code {}: {e}", e.code);
            assert!(!e.msg.is_empty());
            let v = e.json("1.0.0");
            assert_eq!(v["code"], e.code);
            assert!(serde_json::from_str::<serde_json::Value>(&v.to_string()).is_ok());
        }
    }

    let version = weft_cni::run(
        &|k| (k == "CNI_COMMAND").then(|| "VERSION".to_string()),
        data,
    );
    assert!(version.success);
    let v: serde_json::Value = serde_json::from_str(&version.stdout).expect("VERSION is JSON");
    assert!(SUPPORTED_VERSIONS.contains(&v["cniVersion"].as_str().unwrap_or("")));

    if let Some(split) = data.iter().position(|b| *b == b'\n') {
        let args = String::from_utf8_lossy(&data[..split]).into_owned();
        let var = |k: &str| match k {
            "CNI_COMMAND" => Some("DEL".to_string()),
            "CNI_CONTAINERID" => Some("c0ffee".to_string()),
            "CNI_IFNAME" => Some("eth0".to_string()),
            "CNI_ARGS" => Some(args.clone()),
            _ => None,
        };
        match Env::read(&var) {
            Ok(env) => assert!(env.args.iter().all(|(k, _)| !k.contains(';'))),
            Err(e) => assert_eq!(e.code, code::INVALID_ENV),
        }
    }
});
