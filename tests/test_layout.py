import pytest

from runner.layout import layer_types, parse_ratio


@pytest.mark.parametrize("n,ratio,expected", [
    (8, "3:1", "LLLFLLLF"),           # Qwen3-Next / Kimi Linear: full layer last in each group of four
    (4, "3:1", "LLLF"),
    (8, "7:1", "LLLLLLLF"),           # MiniMax-M1
    (6, "1:1", "LFLFLF"),
    (4, "1:0", "LLLL"),
    (4, "0:1", "FFFF"),
    (1, "3:1", "F"),                  # one layer, a full one is asked for: the last layer is full
    (6, "3:1", "LLFLLF"),             # 6 * 1/4 = 1.5 -> 2 full layers, spread evenly, last one full
    (5, "3:1", "LLLLF"),              # 1.25 -> 1
    (4, "7:1", "LLLF"),               # 0.5 -> at least one full layer when F > 0
    (3, "1:3", "LFF"),                # at most n-1 full layers when L > 0
])
def test_ratio_layouts(n, ratio, expected):
    assert "".join(layer_types(n, ratio)) == expected


def test_pattern_is_repeated_and_wins_over_ratio():
    assert "".join(layer_types(8, "1:0", "LLLF")) == "LLLFLLLF"
    assert "".join(layer_types(4, "3:1", "flfl")) == "FLFL"


@pytest.mark.parametrize("bad,fragment", [("3-1", "not of the form"), ("0:0", "no layers"), ("a:b", "not of the form"),
                                          ("3:1:1", "not of the form"), ("-1:2", "not of the form")])
def test_bad_ratios(bad, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_ratio(bad)


def test_bad_patterns():
    with pytest.raises(ValueError, match="does not divide"):
        layer_types(8, pattern="LLF")
    with pytest.raises(ValueError, match="'L' .* and 'F'"):
        layer_types(4, pattern="LLXF")
