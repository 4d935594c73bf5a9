"""The trust boundary between recipes (data from a possibly hostile author) and the operator.

* :mod:`quantmill.trust.operator`: the operator's settings (policy, grants, roots, caps);
* :mod:`quantmill.trust.capabilities`: the code-bearing inputs a recipe asks for;
* :mod:`quantmill.trust.boundary`: the checks ``load_recipe`` runs with both;
* :mod:`quantmill.trust.files`: lock and temporary files that refuse links.

The README's "Security model" section explains it for users.
"""
