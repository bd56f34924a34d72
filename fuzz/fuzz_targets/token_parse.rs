//! Fuzzes the OAuth parsers that see hostile input: the `/token` and `/revoke` form body and
//! `Authorization: Basic` header, and bearer-token validation. None may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lgsp::gateway::oauth::{form_urlencoded, parse_request, TokenAuthority};

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let (header, body) = data.split_at(split);
    let header = std::str::from_utf8(header).ok();
    let _ = parse_request(header, body);
    let _ = form_urlencoded(body);
    if let Ok(text) = std::str::from_utf8(data) {
        let authority = TokenAuthority::new([7u8; 32], 60);
        let _ = authority.validate(text);
        let _ = authority.decode_for_revocation(text);
    }
});
