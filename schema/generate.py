#!/usr/bin/env python3
"""Write schema/batchguard.schema.json and schema/job.schema.json: JSON
Schemas (draft-07) of batchguard's two files, for editors with a TOML
language server. tests/schema.rs checks that they name exactly the keys the
parser takes; docs/reference.md is the prose. Run: python3 schema/generate.py
"""
import json
import pathlib

HERE = pathlib.Path(__file__).parent
DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h|d))+$",
            "description": "500ms, 30s, 45m, 2h, 1d or combined (1h30m)"}
SIZE = {"type": ["string", "integer"], "pattern": r"^[0-9]+(B|kB|MB|GB|TB|PB|KiB|MiB|GiB|TiB|PiB)?$",
        "description": "512MiB, 2GiB, 1GB (SI) or plain bytes"}
ARGV = {"type": "array", "items": {"type": "string"}, "minItems": 1,
        "description": "argv, no shell; each element may use {templates}"}
STRINGS = {"type": "array", "items": {"type": "string"}}
ENV_NAME = {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"}
EVENTS = ["failure", "timeout", "oom", "lost", "fenced", "skipped", "overrun", "missed", "recovered"]


def s(desc, **kw):
    return {"type": "string", "description": desc, **kw}


def obj(props, desc=None):
    o = {"type": "object", "additionalProperties": False, "properties": props}
    if desc:
        o["description"] = desc
    return o


JOB = {
    "description": s("shown in reports"),
    "command": {**ARGV, "description": "the job's argv (no shell)"},
    "workdir": s("working directory; relative to the job file's directory"),
    "user": s("run as this service user (the runner starts as root)"),
    "env": {"type": "object", "additionalProperties": {"type": "string"}},
    "env_file": s("dotenv file; its values are secrets"),
    "secrets": {**STRINGS, "description": "variables whose values are redacted"},
    "schedule": s("5-field cron or @hourly, @daily, @weekly, @monthly"),
    "timezone": s("IANA zone of schedule and {today}; default: the host's"),
    "timeout": {**DURATION, "description": "hard limit: TERM the tree, then KILL"},
    "kill_grace": {**DURATION, "description": "between TERM and KILL (default 10s)"},
    "expected_duration": {**DURATION, "description": "soft: exceeding raises overrun"},
    "memory_max": {**SIZE, "description": "hard memory limit of the tree"},
    "concurrency": {"enum": ["forbid", "replace", "allow"], "default": "forbid"},
    "lock": s("lock name; default: the job name"),
    "retries": {"type": "integer", "minimum": 0, "default": 0},
    "retry_delay": {**DURATION, "description": "doubles per attempt, with jitter"},
    "params": {"type": "object", "additionalProperties": {"type": "string"},
               "description": "param defaults; --param K=V overrides"},
    "items": obj({
        "source": ARGV, "source_file": s("a file with one key per line"),
        "run": {**ARGV, "description": "per-key command; {item} is the key"},
        "mode": {"enum": ["per-item", "stream"], "default": "per-item"},
        "scope": s("ledger scope template, e.g. {date}"),
        "parallelism": {"type": "integer", "minimum": 1},
        "rate": s("at most N starts per second, minute or hour", pattern=r"^[0-9]+(\.[0-9]+)?/(s|m|h)$"),
        "max_attempts": {"type": "integer", "minimum": 1},
        "item_timeout": DURATION,
        "max_keys": {"type": "integer", "minimum": 1},
    }, "idempotent items (reference §5)"),
    "notify": obj({"on": {"type": "array", "items": {"enum": EVENTS}},
                   "channels": {**STRINGS, "description": "names of [channels.*] in batchguard.toml"}}),
    "runbook": obj({"url": s("runbook link"), "verify": s("how to check the result"),
                    "notes": s("what the person paged should know")}),
    "guideline": obj({
        "reads": {"enum": ["replica", "primary", "none"]},
        "replica_dsn_env": ENV_NAME, "max_replica_lag": DURATION,
        "expected_items": {"type": "integer", "minimum": 0},
        "write_impact": s("what the job writes, how much, how fast"),
        "schema_change": {"oneOf": [
            {"type": "boolean"},
            obj({"reviewed_by": STRINGS, "ref": s("the change's reference, e.g. PR-1234")})]},
        "overlap_safe": s("why overlapping runs are safe"),
        "clean": ARGV,
        "role_ok": s("why this host may also serve traffic (G01)"),
    }, "declarations that check audits"),
    "distributed": obj({"enabled": {"type": "boolean"}, "batch": {"type": "integer", "minimum": 1},
                        "lease": DURATION}),
}

URL = s("the URL (prefer url_env: secrets belong in the environment)")
CHANNELS = {
    "slack": {"url": URL, "url_env": ENV_NAME},
    "ping": {"url": URL, "url_env": ENV_NAME},
    "webhook": {"url": URL, "url_env": ENV_NAME, "secret_env": ENV_NAME},
    "email": {"smtp": s("smtp://host[:port] or smtps://host[:port]"), "from": s("sender"),
              "to": STRINGS, "username_env": ENV_NAME, "password_env": ENV_NAME},
    "command": {"command": ARGV},
}


def channel(kind, props):
    return {"if": {"properties": {"type": {"const": kind}}, "required": ["type"]},
            "then": {"properties": {"type": {"const": kind}, **props}, "additionalProperties": False}}


GLOBAL = {
    "state": s("sqlite:PATH or postgres://…"),
    "log_dir": s("run logs (default /var/log/batchguard)"),
    "host": s("this host's label (default: the hostname)"),
    "dashboard_url": s("linked from notifications"),
    "defaults": obj(JOB, "defaults for any job key"),
    "channels": {"type": "object", "additionalProperties": {
        "type": "object", "required": ["type"],
        "properties": {"type": {"enum": list(CHANNELS)}},
        "allOf": [channel(k, v) for k, v in CHANNELS.items()]}},
    "log_max": SIZE,
    "log_retention": DURATION,
    "lease": DURATION,
    "artifact_dir": s("where jobs put results (rule G10)"),
    "notify_digest": DURATION,
    "missed_grace": DURATION,
    "metrics_textfile": s("Prometheus metrics written after every run"),
}


def write(name, title, props):
    doc = {"$schema": "http://json-schema.org/draft-07/schema#",
           "$id": f"https://batchguard.invalid/schema/{name}", "title": title, **obj(props)}
    (HERE / name).write_text(json.dumps(doc, indent=2) + "\n")


write("job.schema.json", "batchguard job (jobs/NAME.toml)", JOB)
write("batchguard.schema.json", "batchguard global settings (batchguard.toml)", GLOBAL)
