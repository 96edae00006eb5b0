"""Human rankings: `rlhf label` serves a page where people rank K responses per prompt (app, items, store),
`rlhf label stats` measures their agreement, and `rlhf data import` reads other tools' rankings."""
