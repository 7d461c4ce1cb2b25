"""Integrations with other libraries. Each submodule imports its library when it is imported
itself: ``import hardloss_cuda`` imports none of them."""
