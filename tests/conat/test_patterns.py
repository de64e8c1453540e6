"""Subject validity (spec §4.1), matching (§4.2) and the interest index (§4.6)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cocalc_hub.conat.patterns import Index, is_valid_subject, is_valid_subject_without_wildcards, matches

# JavaScript's \s with the u flag, as listed in the spec
JS_WHITESPACE = ["\t", "\n", "\x0b", "\x0c", "\r", " ", "\u00a0", "\u1680", *map(chr, range(0x2000, 0x200B)),
                 "\u2028", "\u2029", "\u202f", "\u205f", "\u3000", "\ufeff"]


class ValidityTests(SynchronousTestCase):
    def test_whitespace_list_is_the_specs(self) -> None:
        self.assertEqual(len(JS_WHITESPACE), 25)

    def test_plain_subjects_are_valid(self) -> None:
        for s in ("a", "a.b", "a.b.c", "hub.account.x.api", "_INBOX.account-1.k3", "A-b_c.d%e", "ä.ö.€.😀",
                  "a\u200bb", "x" * 10000):
            self.assertTrue(is_valid_subject(s), s)
            self.assertTrue(is_valid_subject_without_wildcards(s), s)

    def test_empty_and_dots(self) -> None:
        for s in ("", ".", "..", ".a", "a.", "a..b", ".a.b", "a.b.", "a...b", "*.", ".>"):
            self.assertFalse(is_valid_subject(s), s)
            self.assertFalse(is_valid_subject_without_wildcards(s), s)

    def test_non_strings(self) -> None:
        for s in (None, 1, 1.5, b"a.b", ["a"], {"a": 1}, True):
            self.assertFalse(is_valid_subject(s), repr(s))
            self.assertFalse(is_valid_subject_without_wildcards(s), repr(s))

    def test_gt_token_only_last(self) -> None:
        for s in (">", "a.>", "a.b.>", "*.>", "a.*.>"):
            self.assertTrue(is_valid_subject(s), s)
        for s in (">.a", "a.>.b", ">.>", "a.>.>", ">.*"):
            self.assertFalse(is_valid_subject(s), s)

    def test_wildcards_inside_tokens_are_literal_and_allowed(self) -> None:
        for s in ("a*b", ">x", "x>", "a.b*c", "**", ">>", "a.>>.b", "a.**.b", "*x.>y.z"):
            self.assertTrue(is_valid_subject(s), s)

    def test_each_javascript_whitespace_is_rejected(self) -> None:
        for ch in JS_WHITESPACE:
            for s in (ch, f"a{ch}b", f"a.{ch}", f"{ch}.a", f"a.b{ch}.c"):
                self.assertFalse(is_valid_subject(s), repr(s))
                self.assertFalse(is_valid_subject_without_wildcards(s), repr(s))

    def test_python_only_whitespace_is_allowed(self) -> None:
        for ch in ("\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\u180e", "\u200b", "\x00"):
            self.assertTrue(is_valid_subject(f"a{ch}b.c"), repr(ch))
            self.assertTrue(is_valid_subject_without_wildcards(f"a.{ch}"), repr(ch))

    def test_publish_subjects_have_no_star_and_no_trailing_gt(self) -> None:
        for s in ("*", "a.*", "*.a", "a.*.b", "a.b*c", "*a", "a*", ">", "a.>", "ab>", "a.b>", "a*b.>"):
            self.assertFalse(is_valid_subject_without_wildcards(s), s)
        for s in ("a.>b", ">x", "a.>x.c", "a>b"):
            self.assertTrue(is_valid_subject_without_wildcards(s), s)
        self.assertFalse(is_valid_subject_without_wildcards("a..b"))
        self.assertFalse(is_valid_subject_without_wildcards("a b"))


class MatchTests(SynchronousTestCase):
    def check(self, pattern: str, yes: list[str], no: list[str]) -> None:
        index: Index[str] = Index()
        index.add(pattern, pattern)
        for s in yes:
            self.assertTrue(matches(pattern, s), (pattern, s))
            self.assertEqual(index.match(s), [pattern], (pattern, s))
        for s in no:
            self.assertFalse(matches(pattern, s), (pattern, s))
            self.assertEqual(index.match(s), [], (pattern, s))
            self.assertFalse(index.has_match(s))

    def test_literal(self) -> None:
        self.check("a.b", ["a.b"], ["a", "a.b.c", "A.b", "a.B", "b.a", "a.bb", "a.b."])

    def test_star_is_one_token(self) -> None:
        self.check("a.*", ["a.b", "a.*", "a.>", "a.x-y"], ["a", "a.b.c", "b.a"])
        self.check("*.b", ["a.b", "x.b"], ["b", "a.b.c", "a.c"])
        self.check("*", ["a", "*", ">"], ["a.b"])
        self.check("a.*.c", ["a.b.c"], ["a.c", "a.b.b.c", "a.b.d"])

    def test_gt_is_one_or_more_tokens(self) -> None:
        self.check("a.>", ["a.b", "a.b.c", "a.b.c.d.e"], ["a", "b.c", "ab.c"])
        self.check(">", ["a", "a.b", "x.y.z", "*", ">"], [])
        self.check("*.>", ["a.b", "a.b.c"], ["a"])
        self.check("a.*.>", ["a.b.c", "a.b.c.d"], ["a.b", "a"])

    def test_wildcards_inside_tokens_are_literal(self) -> None:
        self.check("a*b", ["a*b"], ["ab", "axb", "a.b"])
        self.check("a.>x", ["a.>x"], ["a.b", "a.b.c"])
        self.check("x.b*", ["x.b*"], ["x.b", "x.bc"])

    def test_every_matching_pattern_is_returned(self) -> None:
        index: Index[str] = Index()
        for p in ("a.b", "a.*", "*.b", "*.*", "a.>", ">", "*.>", "a.b.c", "a.c", "b.>", "a"):
            index.add(p, p)
        self.assertEqual(sorted(index.match("a.b")), sorted(["a.b", "a.*", "*.b", "*.*", "a.>", ">", "*.>"]))
        self.assertEqual(sorted(index.match("a")), [">", "a"])
        self.assertEqual(sorted(index.match("a.b.c")), ["*.>", ">", "a.>", "a.b.c"])
        self.assertEqual(index.match("c"), [">"])

    def test_values_not_patterns_are_returned(self) -> None:
        index: Index[dict[str, int]] = Index()
        value = {"n": 1}
        index.add("a.*", value)
        self.assertIs(index.match("a.b")[0], value)
        self.assertIs(index.get("a.*"), value)
        self.assertIsNone(index.get("a.b"))

    def test_very_long_patterns(self) -> None:
        # no length limit in the core: thousands of tokens match like anything else
        long = ".".join(["t"] * 5000)
        index: Index[str] = Index()
        index.add(long, "literal")
        index.add(".".join(["*"] * 5000), "stars")
        index.add("t." * 4000 + ">", "tail")
        self.assertEqual(sorted(index.match(long)), ["literal", "stars", "tail"])
        self.assertEqual(index.match(long + ".t"), ["tail"])
        self.assertTrue(matches(long, long))


class IndexTests(SynchronousTestCase):
    def test_add_remove_and_contents(self) -> None:
        index: Index[int] = Index()
        index.add("a.b", 1)
        index.add("a.>", 2)
        self.assertEqual((len(index), "a.b" in index, "a.c" in index), (2, True, False))
        self.assertEqual(sorted(index.items()), [("a.>", 2), ("a.b", 1)])
        with self.assertRaises(KeyError):
            index.add("a.b", 3)
        self.assertEqual(index.remove("a.b"), 1)
        self.assertIsNone(index.remove("a.b"))
        self.assertIsNone(index.remove("never"))
        self.assertEqual((len(index), index.match("a.b")), (1, [2]))
        self.assertEqual(index.remove("a.>"), 2)
        self.assertEqual((len(index), index.match("a.b"), list(index.items())), (0, [], []))
        self.assertTrue(index._root.empty())

    def test_removing_longer_pattern_keeps_shorter_one(self) -> None:
        # upstream's deletion bug (§4.6) must not be copied
        index: Index[str] = Index()
        index.add("a", "a")
        index.add("a.b", "a.b")
        index.remove("a.b")
        self.assertEqual(index.match("a"), ["a"])
        self.assertEqual(index.match("a.b"), [])
        self.assertEqual(list(index._root.children["a"].children), [])

    def test_removing_shorter_pattern_keeps_longer_one(self) -> None:
        index: Index[str] = Index()
        index.add("a", "a")
        index.add("a.b", "a.b")
        index.remove("a")
        self.assertEqual(index.match("a"), [])
        self.assertFalse(index.has_match("a"))
        self.assertEqual(index.match("a.b"), ["a.b"])
        index.remove("a.b")
        self.assertTrue(index._root.empty())

    def test_pruning_keeps_siblings_and_wildcard_branches(self) -> None:
        index: Index[str] = Index()
        for p in ("a.b.c", "a.b.d", "a.*.c", "a.>", "a.b.>"):
            index.add(p, p)
        index.remove("a.b.c")
        self.assertEqual(sorted(index.match("a.b.c")), ["a.*.c", "a.>", "a.b.>"])
        self.assertEqual(sorted(index.match("a.b.d")), ["a.>", "a.b.>", "a.b.d"])
        index.remove("a.b.>")
        self.assertEqual(sorted(index.match("a.b.c")), ["a.*.c", "a.>"])
        index.remove("a.*.c")
        self.assertIsNone(index._root.children["a"].star)
        self.assertEqual(index.match("a.b.c"), ["a.>"])
        index.remove("a.>")
        self.assertEqual(index.match("a.b.d"), ["a.b.d"])
        index.remove("a.b.d")
        self.assertTrue(index._root.empty())

    def test_gt_at_root_and_star_tail(self) -> None:
        index: Index[str] = Index()
        index.add(">", "all")
        index.add("*", "one")
        self.assertEqual(sorted(index.match("x")), ["all", "one"])
        self.assertEqual(index.match("x.y"), ["all"])
        index.remove(">")
        self.assertEqual(index.match("x.y"), [])
        self.assertEqual(index.match("x"), ["one"])

    def test_object_like_tokens_are_plain_tokens(self) -> None:
        index: Index[str] = Index()
        for p in ("__proto__", "constructor.x", "a.hasOwnProperty", "toString.*"):
            index.add(p, p)
        self.assertEqual(index.match("__proto__"), ["__proto__"])
        self.assertEqual(index.match("constructor.x"), ["constructor.x"])
        self.assertEqual(index.match("constructor"), [])
        self.assertEqual(index.match("a.hasOwnProperty"), ["a.hasOwnProperty"])
        self.assertEqual(index.match("toString.y"), ["toString.*"])
        self.assertEqual(index.match("valueOf"), [])
        self.assertEqual(index.match("__proto__.x"), [])
        index.remove("__proto__")
        self.assertEqual(index.match("__proto__"), [])
        self.assertTrue(matches("__proto__", "__proto__"))
        self.assertFalse(matches("constructor", "__proto__"))

    def test_falsy_values_are_kept(self) -> None:
        index: Index[Any] = Index()
        index.add("a", 0)
        index.add("b.>", "")
        self.assertEqual((index.match("a"), index.match("b.c")), ([0], [""]))
        self.assertEqual(index.remove("a"), 0)
        self.assertEqual(index.match("a"), [])

    def test_cache_is_invalidated_by_add_and_remove(self) -> None:
        index: Index[str] = Index()
        first = index.match("a.b")
        self.assertEqual(first, [])
        self.assertIs(index.match("a.b"), first)
        index.add("a.*", "a.*")
        second = index.match("a.b")
        self.assertEqual(second, ["a.*"])
        self.assertIs(index.match("a.b"), second)
        index.add("x", "x")  # an unrelated pattern also invalidates
        self.assertIsNot(index.match("a.b"), second)
        self.assertEqual(index.match("a.b"), ["a.*"])
        index.remove("a.*")
        self.assertEqual(index.match("a.b"), [])
        self.assertFalse(index.has_match("a.b"))
        index.remove("missing")  # no change: a cached answer may stay
        self.assertEqual(index.match("x"), ["x"])

    def test_small_cache_stays_correct(self) -> None:
        index: Index[str] = Index(cache_size=2)
        index.add("a.*", "a.*")
        for _ in range(3):
            for s, want in (("a.b", ["a.*"]), ("a.c", ["a.*"]), ("b", []), ("a", [])):
                self.assertEqual(index.match(s), want)
        self.assertLessEqual(len(index._cache), 2)


# --- property: the index agrees with the reference matcher ------------------------------------

_pattern_tokens = st.sampled_from(["a", "b", "*", "A", "a*b"])
_subject_tokens = st.sampled_from(["a", "b", "c", "A", "a*b", "*", ">"])
_patterns = st.builds(lambda body, gt: ".".join(body + ([">"] if gt else [])),
                      st.lists(_pattern_tokens, min_size=0, max_size=4), st.booleans()).filter(bool)
_subjects = st.lists(_subject_tokens, min_size=1, max_size=5).map(".".join)


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None, database=None)
    @given(st.lists(st.tuples(st.booleans(), _patterns), max_size=25), st.lists(_subjects, min_size=1, max_size=8),
           st.integers(1, 5))
    def test_index_agrees_with_reference(self, ops: list[tuple[bool, str]], subjects: list[str],
                                         cache_size: int) -> None:
        index: Index[str] = Index(cache_size=cache_size)
        model: set[str] = set()
        for add, pattern in ops:
            self.assertTrue(is_valid_subject(pattern), pattern)
            if add and pattern not in model:
                index.add(pattern, pattern)
                model.add(pattern)
            elif not add:
                self.assertEqual(index.remove(pattern), pattern if pattern in model else None)
                model.discard(pattern)
            for s in subjects:
                got = index.match(s)
                self.assertEqual(len(got), len(set(got)), s)
                self.assertEqual(set(got), {p for p in model if matches(p, s)}, (s, sorted(model)))
                self.assertEqual(index.has_match(s), bool(got))
        self.assertEqual(sorted(p for p, _ in index.items()), sorted(model))
        for p in list(model):
            index.remove(p)
        self.assertTrue(index._root.empty())
        for s in subjects:
            self.assertEqual(index.match(s), [])
