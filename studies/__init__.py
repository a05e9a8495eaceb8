"""Experiments made with edgekd: scripts that read `edgekd compare` outputs and apply one study's
pre-registered rules. Not part of the installed package; run from the repository root as
`python -m studies.<module>` (studies/README.md)."""
