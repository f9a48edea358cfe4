"""Models: the registry of deep models (`registry`) and its entries (`cnn`, `backbones`, with the
preprocessing `layers` saved inside a model), and the feature classifiers (`features`)."""

from fer_bench.models import backbones, cnn  # noqa: F401 - each module registers its builders
