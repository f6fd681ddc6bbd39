//! Property tests of the parsers added for DKE and PostgreSQL (the fuzz targets
//! `dke_request` and `store_url` check the same properties on arbitrary bytes).

use kluis_server::dke::{key_id, parse_decrypt_body, parse_key_id};
use kluis_server::postgres::{PgOptions, check_options};
use proptest::prelude::*;
use serde_json::{Value, json};

proptest! {
    #[test]
    fn key_ids_round_trip(v in 1..=u32::MAX, public in proptest::collection::vec(any::<u8>(), 0..300)) {
        prop_assert_eq!(parse_key_id(&key_id(v, &public)), Some(v));
    }

    #[test]
    fn only_the_canonical_key_id_form_parses(text in "[0-9a-fA-F-]{0,20}") {
        if let Some(v) = parse_key_id(&text) {
            let (kid, fp) = text.split_once('-').unwrap();
            prop_assert_eq!(kid, v.to_string());
            prop_assert!(fp.len() == 8 && fp.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        }
    }

    #[test]
    fn any_bytes_give_fields_or_a_reason(body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let (alg, value, malformed) = parse_decrypt_body(&body);
        if malformed.is_some() {
            prop_assert!(alg.is_none() && value.is_none());
        } else {
            prop_assert!(matches!(serde_json::from_slice(&body), Ok(Value::Object(_))));
        }
    }

    #[test]
    fn member_names_match_in_any_letter_case(
        alg_name in "(?i:alg)",
        value_name in "(?i:value)",
        alg in "[ -~]{0,20}",
        value in "[A-Za-z0-9+/=]{0,40}",
    ) {
        let body = json!({ alg_name: alg.clone(), value_name: value.clone() }).to_string();
        prop_assert_eq!(parse_decrypt_body(body.as_bytes()), (Some(alg), Some(value), None));
    }

    #[test]
    fn a_name_in_two_letter_cases_is_refused_unless_one_is_exact(upper in "(?i:alg)", a in "[a-z]{1,5}", b in "[a-z]{1,5}") {
        prop_assume!(upper != "alg");
        // An exact `alg` wins over any other letter case.
        let body = format!(r#"{{"{upper}":"{a}","alg":"{b}"}}"#);
        let (alg, _, malformed) = parse_decrypt_body(body.as_bytes());
        prop_assert_eq!(malformed, None);
        prop_assert_eq!(alg, Some(b.clone()));
        // Two names in other letter cases are ambiguous.
        let other = if upper == "ALG" { "Alg" } else { "ALG" };
        let body = format!(r#"{{"{upper}":"{a}","{other}":"{b}"}}"#);
        let (alg, value, malformed) = parse_decrypt_body(body.as_bytes());
        prop_assert!(malformed.is_some() && alg.is_none() && value.is_none());
    }

    #[test]
    fn a_store_url_refusal_never_shows_its_password(
        user in "[a-z]{1,8}",
        password in "[A-Za-z0-9]{8,20}",
        host in "(localhost|127\\.0\\.0\\.1|db\\.example\\.org)",
        query in "(|\\?sslmode=require|\\?port=x|\\?sslmode=bogus|\\?connect_timeout=-1)",
        in_query in any::<bool>(),
    ) {
        let url = if in_query {
            format!("postgres://{user}@{host}/db?password={password}{}", query.replacen('?', "&", 1))
        } else {
            format!("postgres://{user}:{password}@{host}/db{query}")
        };
        let e = check_options(&PgOptions::new(&url)).expect_err("a URL with a password is refused");
        prop_assert!(!e.to_string().contains(&password), "{}", e);
        let shown = format!("{:?}", PgOptions::new(&url));
        prop_assert!(!shown.contains(&password), "{}", shown);
    }

    #[test]
    fn store_urls_never_panic(url in "(postgres(ql)?://)?[ -~]{0,60}") {
        let _ = check_options(&PgOptions::new(&url));
    }
}

#[test]
fn a_local_url_without_password_is_described() {
    let name = check_options(&PgOptions::new("postgres://kluis@localhost:5433/keys")).unwrap();
    assert_eq!(name, "PostgreSQL database `keys` on localhost:5433");
    let e = check_options(&PgOptions::new("postgres://localhost/keys")).unwrap_err();
    assert!(e.to_string().contains("no user"), "{e}");
}
