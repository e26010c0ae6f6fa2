"""nbutils.run.quiet: the Trainer's report of a tied embedding's copies as missing keys, when it
loads the best checkpoint back, is known noise; any other missing key is still reported."""

import io
import logging

from nbutils.run import quiet


def _emit(logger_name, message):
    quiet.install_filters()
    logger = logging.getLogger(logger_name)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    saved = logger.level, logger.disabled  # earlier tests may have quietened or disabled it
    logger.setLevel(logging.WARNING)
    logger.disabled = False
    logger.addHandler(handler)
    try:
        logger.warning(message)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.disabled = saved[1]
    return stream.getvalue()


def test_missing_copies_of_a_tied_embedding_are_not_reported():
    # text_to_pandas's smoke run (T5, tied embeddings) loading its best checkpoint
    assert _emit("transformers.trainer", "There were missing keys in the checkpoint model loaded: "
                 "['encoder.embed_tokens.weight', 'decoder.embed_tokens.weight', 'lm_head.weight'].") == ""


def test_other_missing_keys_are_reported():
    message = ("There were missing keys in the checkpoint model loaded: "
               "['encoder.embed_tokens.weight', 'encoder.block.0.layer.0.SelfAttention.q.weight'].")
    assert "SelfAttention.q.weight" in _emit("transformers.trainer", message)
    assert "unexpected" in _emit("transformers.trainer", "There were unexpected keys in the checkpoint: ['x'].")


def test_peft_reading_the_deprecated_checkpointing_alias_is_quiet_and_other_future_warnings_are_not(cache):
    import warnings

    from peft import LoraConfig, get_peft_model

    from tests.training_helpers import tiny_classifier

    model = tiny_classifier(cache, "bert")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # as a fresh kernel shows each warning once
        quiet.install_filters()
        get_peft_model(model, LoraConfig(r=2, target_modules=["query"], task_type="SEQ_CLS"))
        warnings.warn("some other deprecation", FutureWarning)
    texts = [str(w.message) for w in caught]
    assert not any(quiet.GRADIENT_CHECKPOINTING_ALIAS in t for t in texts), texts
    assert "some other deprecation" in texts
