import pytest

from semid_index.errors import ConfigError
from semid_index.ids import SemanticId


def test_string_parse_prefix_tokens():
    sid = SemanticId((12, 201, 7), 0)
    assert str(sid) == "12-201-7-0"
    assert SemanticId.parse("12-201-7-0") == sid
    assert SemanticId.parse(" 12-201-7-0 ", n_levels=3) == sid
    assert sid.prefix(1) == (12,) and sid.prefix(3) == (12, 201, 7)
    assert sid.tokens() == "<a_12><b_201><c_7><d_0>"
    assert sid.depth == 3
    assert hash(sid) == hash(SemanticId([12, 201, 7], 0))
    assert sorted([SemanticId((2, 1), 0), SemanticId((1, 9), 3)])[0] == SemanticId((1, 9), 3)


@pytest.mark.parametrize("text", ["", "12", "12--7-0", "12-a-7-0", "-1-2", "01-2-3", "1.5-2"])
def test_malformed_strings_are_refused(text):
    with pytest.raises(ConfigError, match="malformed semantic ID"):
        SemanticId.parse(text)


def test_bad_parts_and_depths():
    with pytest.raises(ConfigError, match="has 2 levels, expected 3"):
        SemanticId.parse("1-2-0", n_levels=3)
    with pytest.raises(ConfigError, match="non-negative"):
        SemanticId((1, -2), 0)
    with pytest.raises(ConfigError, match="prefix depth"):
        SemanticId((1, 2), 0).prefix(3)
    with pytest.raises(ConfigError, match="at least one level"):
        SemanticId((), 0)


def test_token_letters_go_past_z():
    sid = SemanticId(tuple(range(27)), 5)
    assert sid.tokens().endswith("<aa_26><ab_5>")
