//! What the sealed files give away about their names (issue 17 defect 6) and what leaves
//! the machine, against a real `kluis-server` on loopback.

mod common;
use common::*;

/// `--hide-names --pad` used to give the name's length away in the header (229 vs 279 bytes
/// for names of 1 and 50 characters). Now every name up to 256 bytes gives the same header,
/// `inspect` says precisely what shows, and the names come back on open.
#[test]
fn hide_names_with_pad_gives_one_header_length_for_any_short_name() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    let long = format!("{}.txt", "n".repeat(46));
    write(&alice.path("src/a"), b"same content");
    write(&alice.path(&format!("src/{long}")), b"same content");
    alice
        .run(&[
            "seal",
            "--label",
            "hr",
            "--hide-names",
            "--pad",
            "-o",
            "cloud",
            "src",
        ])
        .ok();
    let sealed = tree(&alice.path("cloud"));
    assert_eq!(sealed.len(), 2, "{sealed:?}");
    let mut headers = Vec::new();
    for name in &sealed {
        let v = alice
            .run(&["--json", "inspect", &format!("cloud/{name}")])
            .ok()
            .json();
        let f = &v["files"][0];
        assert_eq!(f["name_bytes_at_most"], 256, "{v}");
        headers.push((
            f["header_bytes"].as_u64().unwrap(),
            f["total_bytes"].clone(),
        ));
        let human = alice
            .run(&["inspect", &format!("cloud/{name}")])
            .ok()
            .stdout_text();
        assert!(
            human.contains("else only that it is at most 256 bytes"),
            "{human}"
        );
        assert!(
            !human.contains("the exact size and the name are sealed"),
            "{human}"
        );
    }
    assert_eq!(headers[0], headers[1], "header and file sizes differ");
    alice.run(&["open", "-o", "back", "cloud"]).ok();
    assert_eq!(tree(&alice.path("back/src")), tree(&alice.path("src")));
}
