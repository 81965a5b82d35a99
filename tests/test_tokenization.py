from build_artifacts.corpus import english_sentences, parity_sentences
from runtime.tokenization import TextTokenizer


def test_pads_to_longest_and_truncates_keeping_the_closing_token(minilm_dir):
    tokenizer = TextTokenizer(minilm_dir / "tokenizer.json", max_length=16)
    texts = ["Dinner is ready.", english_sentences()[-1]]
    batch = tokenizer.encode(texts)
    assert batch.input_ids.shape == (2, 16)
    assert batch.token_counts[1] == 16
    assert batch.attention_mask[0].sum() == batch.token_counts[0] < 16
    sep = tokenizer._tokenizer.token_to_id("[SEP]")
    assert batch.input_ids[1, -1] == sep
    assert batch.input_ids[0, batch.token_counts[0] - 1] == sep
    assert (batch.input_ids[0, batch.token_counts[0] :] == tokenizer.pad_id).all()


def test_parity_corpus_spans_a_few_words_to_about_250_tokens(minilm_dir):
    tokenizer = TextTokenizer(minilm_dir / "tokenizer.json", max_length=512)
    counts = tokenizer.count_tokens(parity_sentences())
    assert len(counts) >= 20
    assert min(counts) <= 10
    assert max(counts) >= 220
