//! Secrets (env_file values and `secrets` names) never reach logs, records
//! or the failure report.

use crate::harness::*;

#[test]
fn secrets_are_redacted_everywhere() {
    let env = Env::new();
    let envfile = env.write(
        "job.env",
        "DB_PASSWORD=hunter2-s3cr3t\nAPI_TOKEN='tok-abc-123'\n",
    );
    env.job(
        "leaky",
        &format!(
            r#"command = ["sh", "-c", "echo password is $DB_PASSWORD; echo token $API_TOKEN >&2; echo extra $OTHER; exit 4"]
env_file = "{}"
env = {{ OTHER = "plain-but-secret" }}
secrets = ["OTHER"]"#,
            envfile.display()
        ),
    );
    let d = env.run(&["run", "leaky"]);
    d.code(4);
    let run = env.last_run("leaky");
    let log = env.log_of(&run);
    let show = env
        .run(&["show", run["id"].as_str().unwrap(), "--format", "json"])
        .stdout();
    for secret in ["hunter2-s3cr3t", "tok-abc-123", "plain-but-secret"] {
        assert!(!log.contains(secret), "log leaks {secret}:\n{log}");
        assert!(!d.stderr().contains(secret), "report leaks {secret}");
        assert!(!show.contains(secret), "record leaks {secret}");
    }
    assert!(log.contains("stdout password is ***"), "{log}");
    assert!(log.contains("stderr token ***"), "{log}");
    assert!(log.contains("stdout extra ***"), "{log}");
}
