#!/usr/bin/env python3
"""Validate TOML files against batchguard's JSON Schemas: check.py SCHEMA FILE...
Exit 0 when every file is valid, 1 with the errors otherwise (tests/schema.rs)."""
import json
import sys
import tomllib

import jsonschema

schema = json.load(open(sys.argv[1]))
bad = 0
for path in sys.argv[2:]:
    with open(path, "rb") as f:
        doc = tomllib.load(f)
    for err in jsonschema.Draft7Validator(schema).iter_errors(doc):
        where = ".".join(str(p) for p in err.absolute_path) or "(top)"
        print(f"{path}: {where}: {err.message}")
        bad += 1
sys.exit(1 if bad else 0)
