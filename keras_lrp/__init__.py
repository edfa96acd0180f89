"""keras-lrp: Layer-wise Relevance Propagation for Keras 3 LSTM models (Arras et al. 2017).

The public API is listed in ``__all__``; submodules (and with them TensorFlow) are imported on
first use. ``LRP_LSTMCell`` is registered with Keras when ``keras_lrp.cells`` is imported: use
``keras_lrp.load_model`` (which does so), or touch ``keras_lrp.LRP_LSTMCell`` before calling
``keras.models.load_model`` on a file that contains the cell.
"""
import importlib

__version__ = "0.2.0.dev0"  # the one version source (setup.cfg reads it)

_EXPORTS = {
    "explain": "explainer", "LRP": "explainer", "Explainer": "explainer", "Explanation": "explanation",
    "explain_text": "text_explainer",
    "Epsilon": "rules", "ZPlus": "rules", "AlphaBeta": "rules", "Gamma": "rules", "Composite": "composites",
    "SignalTakeAll": "rules", "Half": "rules", "Proportional": "rules",
    "UnsupportedLayerError": "propagators", "register": "propagators", "Propagator": "propagators",
    "SelfCheckError": "selfcheck",
    "LRP_LSTMCell": "cells", "lstm_activations": "cells",
    "lrpify_model": "graph",
    "load_model": "io", "ModelFileError": "io", "ModelFileNotFoundError": "io", "UnsafeModelError": "io",
    "UnsupportedModelError": "io", "ModelTooLargeError": "io",
    "cache_lstm_forward_activations_batch": "compat", "cashe_lstm_forward_activations_batch": "compat",
    "lrp_dense_batch": "compat", "lrp_lstm_batch": "compat", "get_target_activation": "compat",
    "lrp_lstm_batch_parts": "compat", "lrp_concat": "compat", "lrp_slice": "compat",
    "Tokenizer": "text", "tokenize": "text", "Vocabulary": "text", "VocabularyError": "text",
    "KerasTokenizer": "text",
    # the SST application (keras_lrp.sst), exported here for convenience; the engine never imports it
    "read_sst": "sst.reader", "SSTFormatError": "sst.reader",
    "load_pretrained": "sst.pretrained", "SentimentModel": "sst.pretrained",
    "html_heatmap": "visualize", "html_page": "visualize", "display_heatmap": "visualize",
    "ansi_heatmap": "visualize", "plot_word_heatmap": "visualize",
    "plot_time_feature_heatmap": "visualize", "save_png": "visualize", "shared_scale": "visualize",
    "explain_corpus": "distributed", "MultiDeviceExplainer": "distributed",
    "plot_word_heatmaps": "visualize", "plot_time_feature_heatmaps": "visualize", "html_legend": "visualize",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'keras_lrp' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
