"""Drives a Strait node with the official Anthropic Python SDK (plain and streamed).

Invoked by python_sdk.rs with STRAIT_URL and STRAIT_KEY; prints one JSON line of
what it observed so the Rust test can assert on it.
"""
import json
import os
import sys

import anthropic

client = anthropic.Anthropic(base_url=os.environ["STRAIT_URL"], api_key=os.environ["STRAIT_KEY"], max_retries=0)

plain = client.messages.create(
    model="claude-sonnet-4-5",
    max_tokens=32,
    messages=[{"role": "user", "content": "Hello from the SDK"}],
)

events = []
with client.messages.stream(
    model="claude-sonnet-4-5",
    max_tokens=32,
    messages=[{"role": "user", "content": "Stream to me"}],
) as stream:
    for event in stream:
        events.append(event.type)
    final = stream.get_final_message()

error_type = None
try:
    anthropic.Anthropic(base_url=os.environ["STRAIT_URL"], api_key="wrong-key", max_retries=0).messages.create(
        model="claude-sonnet-4-5", max_tokens=8, messages=[{"role": "user", "content": "x"}]
    )
except anthropic.AuthenticationError as e:
    error_type = e.body["error"]["type"] if isinstance(e.body, dict) else str(e.body)

json.dump(
    {
        "plain_text": plain.content[0].text,
        "plain_output_tokens": plain.usage.output_tokens,
        "stream_events": events,
        "stream_text": "".join(b.text for b in final.content if b.type == "text"),
        "stream_output_tokens": final.usage.output_tokens,
        "auth_error": error_type,
    },
    sys.stdout,
)
print()
