"""mask_dsn never shows a password, whatever the DSN's shape, and still shows where it points."""

from __future__ import annotations

import pytest

from dbt_durable.store.connect import mask_dsn

# (dsn, the password as written or meant, substrings the masked form must still show)
SHAPES = [
    ("postgresql://u:s3cretPw@db.example.com:5432/app", "s3cretPw", ["db.example.com", "app", "***"]),
    ("postgres://u:s3cretPw@db.example.com/app", "s3cretPw", ["db.example.com", "app"]),
    ("postgresql://u:p%40ss%3Aw%2Fd%3F@h/app", "p%40ss%3Aw%2Fd%3F", ["h", "app"]),
    ("postgresql://u:p%40ss%3Aw%2Fd%3F@h/app", "p@ss:w/d?", ["h", "app"]),
    ("postgresql://u:pa@ss@h/app", "pa@ss", ["h", "app"]),  # an unencoded "@"
    ("postgresql://u:pa:ss@h/app", "pa:ss", ["h", "app"]),
    ("postgresql://u:pa?ss@h/app", "pa?ss", ["h", "app"]),
    ("postgresql://u:pa/ss@h/app", "pa/ss", []),  # libpq misreads it; nothing of it may show
    ("postgresql://u@h/app?password=qu3ryPw&sslmode=require", "qu3ryPw", ["h", "app", "sslmode"]),
    ("postgresql://h/app?pass%77ord=qu3ryPw", "qu3ryPw", ["h", "app"]),  # percent-encoded key
    (
        "postgresql://u:mh0stPw@h1:5432,h2:5433/app?target_session_attrs=read-write",
        "mh0stPw",
        ["h1", "h2", "app"],
    ),
    ("postgresql://u:v6Pw@[::1]:5432/app", "v6Pw", ["::1", "app"]),
    ("postgresql://u:s0ckPw@/app?host=/var/run/postgresql", "s0ckPw", ["/var/run/postgresql", "app"]),
    ("host=h port=5432 user=u password=kvPw dbname=app", "kvPw", ["host=h", "dbname=app"]),
    ("host=h password='quoted pw' dbname=app", "quoted pw", ["host=h", "dbname=app"]),
    ("host=h password='it\\'s \\\\ pw' dbname=app", "it\\'s", ["host=h", "dbname=app"]),
    ("host=h password=esc\\ aped dbname=app", "esc\\ aped", ["host=h", "dbname=app"]),
    ("host=h password = spaced dbname=app", "spaced", ["host=h", "dbname=app"]),
    ("host=h sslpassword=keyPw dbname=app", "keyPw", ["host=h", "dbname=app"]),
    ("host=h PASSWORD=upperPw dbname=app", "upperPw", []),  # not a libpq keyword: malformed
    ("host=h password='unterminated pw dbname=app", "unterminated pw", ["host=h"]),
    ("host=h password", "", ["host=h"]),  # malformed: no value at all
    ("host=h password brokenPw dbname=app", "brokenPw", ["host=h"]),  # malformed: no "="
    ("postgresql://u:br0kenPw@h:notaport/app", "br0kenPw", []),  # malformed URI
    ("postgresql://u:br0ken@Pw@h/app?x=%zz", "br0ken@Pw", []),  # malformed, "@" in the password
    ("host=h dbname=app", "", ["host=h dbname=app"]),  # nothing to mask
]


@pytest.mark.parametrize("dsn,password,shown", SHAPES, ids=[s[0] for s in SHAPES])
def test_mask_dsn_hides_the_password(dsn: str, password: str, shown: list[str]) -> None:
    masked = mask_dsn(dsn)
    if password:
        assert password not in masked, masked
        assert "***" in masked, masked
    for part in shown:
        assert part in masked, masked


def test_a_dsn_keeps_its_form_when_that_is_safe() -> None:
    assert mask_dsn("postgresql://u:pw@h:5432/app") == "postgresql://u:***@h:5432/app"
    assert mask_dsn("host=h password='a b' dbname=app") == "host=h password=*** dbname=app"
    assert mask_dsn("postgresql://u@h/app?password=x&sslmode=require") == (
        "postgresql://u@h/app?password=***&sslmode=require"
    )
