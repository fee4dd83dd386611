//! The command line explains itself: completions a shell can load and a
//! manual page `man` renders.

use std::process::Command;

fn outpost(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(args)
        .output()
        .expect("outpost");
    assert!(out.status.success(), "outpost {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn bash_completions_load_and_complete_subcommands() {
    crate::common::require("bash", "bash");
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("outpost.bash");
    std::fs::write(&script, outpost(&["completions", "bash"])).expect("script");
    // Load it, then ask the completion function what follows `outpost st`.
    let probe = format!(
        "source {}; COMP_WORDS=(outpost st); COMP_CWORD=1; COMP_LINE='outpost st'; COMP_POINT=10; \
         _outpost outpost st outpost; printf '%s\\n' \"${{COMPREPLY[@]}}\"; complete -p outpost",
        script.display()
    );
    let out = Command::new("bash")
        .args(["-c", &probe])
        .output()
        .expect("bash");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.lines().any(|l| l == "status"), "{said}");
    assert!(
        said.contains("-F _outpost outpost"),
        "registered for outpost: {said}"
    );
}

#[test]
fn the_manual_page_renders_with_man() {
    crate::common::require("man", "man-db");
    let dir = tempfile::tempdir().expect("tempdir");
    let page = dir.path().join("outpost.1");
    std::fs::write(&page, outpost(&["man"])).expect("page");
    let out = Command::new("man")
        .args(["-l", "-P", "cat"])
        .arg(&page)
        .env("MANWIDTH", "100")
        .output()
        .expect("man");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in ["NAME", "outpost", "SUBCOMMANDS", "check-config", "init"] {
        assert!(text.contains(want), "no `{want}` in:\n{text}");
    }
}

/// `outpost status` without `--config`, from another directory, finds the
/// one outpost running under this user (its note in the runtime directory),
/// and says what a person needs: uptime, the page, queues and the oldest
/// record's wait, clients, and why a sink is not connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_finds_the_running_outpost_from_any_directory() {
    let w = crate::common::World::new("");
    let runtime = tempfile::tempdir().expect("runtime dir");
    let run = runtime.path().to_str().expect("utf-8").to_string();
    let text = w.site().mqtt("", "");
    let mut op = w.start_with_env(&text, &[("XDG_RUNTIME_DIR", &run)]);
    assert!(crate::common::wait_until(
        std::time::Duration::from_secs(10),
        || { op.status_json()["sinks"]["up"]["connected"] == true }
    ));
    let elsewhere = tempfile::tempdir().expect("another cwd");
    let status = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
            .arg("status")
            .current_dir(elsewhere.path())
            .env("XDG_RUNTIME_DIR", &run)
            .output()
            .expect("outpost status")
    };
    let out = status();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(&format!("pid {}", op.pid().expect("pid"))),
        "{said}"
    );
    for want in [
        "up ",
        "sink up: connected",
        "local broker: healthy",
        "clients",
    ] {
        assert!(said.contains(want), "`{want}` in:\n{said}");
    }
    op.terminate();
    // Nothing running: it says so, and where it looked.
    let out = status();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no running outpost found"), "{err}");
}
