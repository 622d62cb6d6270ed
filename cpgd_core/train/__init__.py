"""Training: ``python -m cpgd_core.train {cpfp,make-val,cpcontrolnet}`` (see ``__main__``)."""
