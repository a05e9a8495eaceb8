"""The INT8 search's time budget: one definition for the recipe (export.search_budget),
`edgekd export --search-budget` and the search itself (int8_search.check_budget).
Import-free, so the CLI can show the limit in --help without importing the recipe schema."""

DEFAULT_SEARCH_BUDGET_S = 600.0
# A day: a longer search is a typo (minutes for hours), and the budget is wall-clock time
# the export holds a machine for.
MAX_SEARCH_BUDGET_S = 86400.0
