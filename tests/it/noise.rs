//! Noise control beyond the channels (SPEC §7, issue #10): cron mails what
//! `run` prints on stderr, so the report follows the same policy; repeated
//! overruns are summarised like repeated failures.

use crate::receiver::hooked_env;

#[test]
fn cron_mail_follows_the_noise_policy() {
    let (env, hook) = hooked_env("notify_digest = \"1h\"\n");
    env.hooked_job(
        "failing",
        "command = [\"sh\", \"-c\", \"echo broken >&2; exit 3\"]",
    );
    let first = env.run(&["run", "failing"]);
    first.code(3).stderr_has("ended failure");
    for _ in 0..4 {
        let d = env.run(&["run", "failing"]);
        d.code(3);
        assert!(
            !d.stderr().contains("ended failure"),
            "a suppressed failure printed its report (cron would mail it):\n{}",
            d.stderr()
        );
    }
    hook.wait_for_one("the first failure", 10);
    assert_eq!(hook.take().len(), 1, "one message for the streak");
    // Without a channel, every failure is reported on stderr.
    env.job("bare", "command = [\"sh\", \"-c\", \"exit 3\"]\n");
    for _ in 0..2 {
        env.run(&["run", "bare"])
            .code(3)
            .stderr_has("ended failure");
    }
}

#[test]
fn repeated_overruns_are_told_once() {
    let (env, hook) = hooked_env("notify_digest = \"1h\"\n");
    env.job(
        "slow",
        "command = [\"sleep\", \"1.5\"]\nexpected_duration = \"500ms\"\n\
         [notify]\non = [\"overrun\"]\nchannels = [\"hook\"]\n",
    );
    for _ in 0..3 {
        env.run(&["run", "slow"]).code(0);
    }
    let overruns: Vec<_> = hook
        .take()
        .into_iter()
        .filter(|r| r.json()["event"] == "overrun")
        .collect();
    assert_eq!(
        overruns.len(),
        1,
        "three overrunning runs in a row: one message"
    );
}
