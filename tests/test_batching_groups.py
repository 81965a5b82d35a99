from runtime.batching import padding_efficient_groups


def test_one_long_text_does_not_pad_the_short_ones():
    lengths = [12, 230, 15, 9, 14, 11]
    groups = padding_efficient_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert [1] in groups  # the paragraph runs alone
    short = next(g for g in groups if 0 in g)
    assert set(short) == {0, 2, 3, 4, 5}


def test_similar_lengths_stay_in_one_call():
    assert padding_efficient_groups([20, 22, 21, 25, 24]) == [[0, 2, 1, 4, 3]]
    assert padding_efficient_groups([5]) == [[0]]
    assert padding_efficient_groups([]) == []


def test_a_cap_and_no_padding_cut_give_length_sorted_chunks():
    lengths = [12, 230, 15, 9, 14, 11, 300]
    assert padding_efficient_groups(lengths, max_padding=None, max_size=3) == [[3, 5, 0], [4, 2, 1], [6]]
    capped = padding_efficient_groups(lengths[:6], max_size=4)  # the services' cut, and no group above the cap
    assert capped == [[3, 5, 0, 4], [2], [1]]
