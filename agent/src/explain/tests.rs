use super::*;

#[test]
fn targets_parse_or_say_what_is_wrong() {
    assert_eq!(parse_target("api.example.com", 443), Ok(("api.example.com".into(), 443)));
    assert_eq!(parse_target("api.example.com:8443", 443), Ok(("api.example.com".into(), 8443)));
    assert_eq!(parse_target("169.254.169.254:80", 443), Ok(("169.254.169.254".into(), 80)));
    assert_eq!(parse_target("2001:db8::5", 443), Ok(("2001:db8::5".into(), 443)));
    assert_eq!(parse_target("[2001:db8::5]:8443", 443), Ok(("2001:db8::5".into(), 8443)));
    for bad in ["", ":443", "host:", "host:99999", "host:0", "[::1", "[nope]:1", "[::1]x"] {
        assert!(parse_target(bad, 443).is_err(), "{bad:?}");
    }
}
