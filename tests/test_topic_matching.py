"""The topic matcher against a naive recursive reference, plus RabbitMQ's edge cases."""
from hypothesis import given, settings
from hypothesis import strategies as st

from amqtask.topology.model import split_topic_words, topic_matches


def reference_match(pattern: list[str], key: list[str]) -> bool:
    """Plain recursion over words: slow, obviously right."""
    if not pattern:
        return not key
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(reference_match(rest, key[i:]) for i in range(len(key) + 1))
    if not key:
        return False
    return (head == "*" or head == key[0]) and reference_match(rest, key[1:])


words = st.sampled_from(["a", "b", "c", "", "ab"])
pattern_words = st.one_of(words, st.just("*"), st.just("#"))


# At least 2000 examples (they are cheap); more under the `long` profile (make fuzz).
@settings(max_examples=max(2000, settings().max_examples))
@given(st.lists(pattern_words, max_size=6), st.lists(words, max_size=6))
def test_matcher_agrees_with_reference(pattern, key):
    pattern_text, key_text = ".".join(pattern), ".".join(key)
    expected = reference_match(split_topic_words(pattern_text), split_topic_words(key_text))
    assert topic_matches(pattern_text, key_text) == expected


def test_star_is_exactly_one_word():
    assert topic_matches("web.*", "web.add")
    assert not topic_matches("web.*", "web")
    assert not topic_matches("web.*", "web.a.b")
    assert topic_matches("web.*", "web.")  # the empty word is a word


def test_hash_is_zero_or_more_words():
    assert topic_matches("web.#", "web")
    assert topic_matches("web.#", "web.a.b.c")
    assert topic_matches("#", "")
    assert topic_matches("#", "anything.at.all")
    assert topic_matches("#.#", "x")
    assert not topic_matches("web.#", "webx.a")


def test_empty_key_and_empty_words():
    assert topic_matches("", "")
    assert not topic_matches("*", "")
    assert not topic_matches("", "a")
    assert topic_matches("a..b", "a..b")
    assert topic_matches("a.*.b", "a..b")
    assert split_topic_words("") == []
    assert split_topic_words(".") == ["", ""]


def test_many_hashes_do_not_explode():
    pattern = ".".join(["#"] * 30 + ["z"])
    assert not topic_matches(pattern, ".".join(["a"] * 60))
    assert topic_matches(pattern, ".".join(["a"] * 60 + ["z"]))
