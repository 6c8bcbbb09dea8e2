from core.ids import PREFIXES, has_prefix, new_id


def test_ids_carry_their_type_and_sort_by_creation_time():
    earlier = new_id("job", now_ms=1_700_000_000_000)
    later = new_id("job", now_ms=1_700_000_000_001)
    assert earlier.startswith("job_") and has_prefix(earlier, "job")
    assert earlier < later
    assert not has_prefix(earlier, "file")


def test_ids_are_unique_within_one_millisecond():
    ids = {new_id("file", now_ms=42) for _ in range(10_000)}
    assert len(ids) == 10_000


def test_every_kind_has_a_distinct_prefix():
    assert len(set(PREFIXES.values())) == len(PREFIXES)
