"""Drives a Strait node with the official Anthropic Python SDK through an upstream
429 on one model class, then at once calls of other scopes, as user code would.

Invoked by python_sdk.rs with STRAIT_URL and STRAIT_KEY; prints one JSON line of
what each call returned so the Rust test can assert on it.
"""
import json
import os
import sys

import anthropic

client = anthropic.Anthropic(base_url=os.environ["STRAIT_URL"], api_key=os.environ["STRAIT_KEY"], max_retries=0)
msg = [{"role": "user", "content": "Hello from the SDK"}]
seen = {}


def call(name, fn):
    try:
        fn()
        seen[name] = {"ok": True}
    except anthropic.APIStatusError as e:
        seen[name] = {
            "ok": False,
            "status": e.status_code,
            "type": e.body.get("error", {}).get("type") if isinstance(e.body, dict) else None,
            "scope": e.response.headers.get("x-strait-upstream-scope"),
            "source": e.response.headers.get("x-strait-ratelimited"),
        }


call("sonnet_first", lambda: client.messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=msg))
call("sonnet_limited", lambda: client.messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=msg))
# At once, with no pause: other scopes must be served.
call("count_tokens", lambda: client.messages.count_tokens(model="claude-sonnet-4-5", messages=msg))
call("models", lambda: client.models.list())
call("haiku", lambda: client.messages.create(model="claude-haiku-4-5", max_tokens=16, messages=msg))
call("sonnet_again", lambda: client.messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=msg))

json.dump(seen, sys.stdout)
print()
