from runtime.markdown import table


def test_table_renders_header_separator_and_rows():
    assert table(["a", "b c"], [[1, "x"], ["-", 0.5]]) == "| a | b c |\n|---|---|\n| 1 | x |\n| - | 0.5 |"
    assert table(["a", "b"], []) == "| a | b |\n|---|---|"
    assert table(["a", "b", "c"], [["x", "", ""]]).endswith("\n| x | | |")  # an empty cell stays "| |"
