//! Every ABI decoder on arbitrary bytes: none may panic, and whatever
//! decodes must encode back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vsic_abi::records::{decode_stats, ExtentRun, Identify, VsaInfo, VsicInfo};
use vsic_abi::{AdminCommand, AdminCompletion, CapToken};

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = AdminCommand::decode(data) {
        assert_eq!(&c.encode()[..], data);
    }
    if let Ok(c) = AdminCompletion::decode(data) {
        let _ = c.encode();
    }
    if let Ok(t) = CapToken::decode(data) {
        assert_eq!(&t.encode()[..], data);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(t) = CapToken::from_text(text) {
            assert_eq!(CapToken::from_text(&t.to_text()).unwrap(), t);
        }
    }
    let _ = Identify::decode(data);
    let _ = VsaInfo::decode_array(data);
    let _ = VsicInfo::decode_array(data);
    let _ = ExtentRun::decode_array(data);
    let _ = decode_stats(data);
});
