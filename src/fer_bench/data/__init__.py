"""The data layer: sources list labelled items, `decoding` turns them into uint8 48x48 arrays (cached),
`dataset` splits them by the FER-2013 protocol, `pipeline` feeds them to Keras through tf.data, and
`labelled` reads another dataset for a cross-dataset test."""
