"""The console's pages: one module per question a person asks; each defines PAGES (see tollgate.console)."""
