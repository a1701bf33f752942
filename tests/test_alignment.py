"""Text alignment: the model writes entity text, the aligner must find the occurrence a reader would point at."""

from reamo.alignment import align, find_span
from reamo.protocol import ParsedOutput
from reamo.schema import Entity


def _at(text: str, needle: str, taken: set[tuple[int, int]] | None = None) -> str | int | None:
    span = find_span(text, needle, taken)
    return None if span is None else span.start


def test_a_name_glued_into_a_handle_or_hashtag_loses_to_the_whole_word() -> None:
    text = "@ WithrowJerami Hey Jerami check out this Event"
    assert _at(text, "Jerami") == text.index("Hey Jerami") + 4
    assert _at("RT @ ScorpionJet : Rick Smith discusses Scorpion", "Scorpion") == 40
    assert _at("SBU fans and BU fans", "BU") == 13


def test_inside_a_word_is_still_found_when_it_is_the_only_occurrence() -> None:
    assert _at("NBA2K17 is out", "NBA") == 0
    assert _at("no such name here", "Obama") is None


def test_repeated_mentions_take_the_next_free_occurrence() -> None:
    text = "Obama met Obama"
    assert _at(text, "Obama") == 0
    assert _at(text, "Obama", {(0, 5)}) == 10
    assert _at("Obama", "Obama", {(0, 5)}) == 0  # every occurrence taken: the first, never None


def test_exact_case_wins_over_other_case_and_spacing_is_loose() -> None:
    assert _at("apple pie at Apple", "Apple") == 13
    assert _at("Ted  Cruz speaks", "Ted Cruz") == 0
    assert _at("the *Donald Trump show", "Donald Trump") == 5  # punctuation is a word edge
    assert _at("Chilean pride ! # chile", "Chile") == 18  # other case as a whole word beats exact case inside one


def test_align_gives_each_repeated_entity_its_own_whole_word_span() -> None:
    text = "@ WithrowJerami Hey Jerami , Jerami !"
    parsed = ParsedOutput(entities=[Entity(text="Jerami", type="PER"), Entity(text="Jerami", type="PER")])
    entities, _, _, problems = align(text, parsed)
    assert [e.span.start for e in entities if e.span] == [20, 29]
    assert problems == []
