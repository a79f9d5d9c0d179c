"""Schemathesis hooks of tests/integration/schemathesis.rs: generators for what envoy/openapi.json
states but a JSON Schema generator cannot make fast enough, or at all.

- A new password (`format: password`, the NewPassword component) must match five patterns at once
  (no control character; an uppercase letter, a lowercase letter, a digit and a special
  character somewhere). Drawing strings until one matches all of them is too slow, so valid ones
  are built here: one of each class, then other characters. Schemathesis still checks each
  against the document.
- An API key's `expires_at` must be in the future, which no JSON Schema keyword can say: a
  generated time in the past is moved to the year 2400 (a leap year, so 29 February stays valid).
"""

from datetime import datetime, timezone
import string

import schemathesis
from hypothesis import strategies as st

# bcrypt's limit is 72 bytes: four characters of at most 4 bytes and at most ten more stay below.
schemathesis.openapi.format(
    "password",
    st.tuples(
        st.characters(categories=["Lu"]),
        st.characters(categories=["Ll"]),
        st.sampled_from(string.digits),
        st.sampled_from("!#$%&*+-./:;=?@^_~"),
        st.text(st.characters(exclude_categories=["Cc", "Cs"]), min_size=4, max_size=10),
    ).map("".join),
)


@schemathesis.hook
def map_case(context, case):
    body = case.body
    if not case.operation.path.endswith("/keys") or not isinstance(body, dict):
        return case
    value = body.get("expires_at")
    if not isinstance(value, str):
        return case
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return case
    if when.tzinfo is not None and when < datetime.now(timezone.utc) and value[:4].isdigit():
        case.body = {**body, "expires_at": "2400" + value[4:]}
    return case
