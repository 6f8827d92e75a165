"""The terminal views name items by their titles and show the recommendations."""

from __future__ import annotations

from rich.console import Console

from streams.view import LiveState, Record, Titles, format_update

UPDATE = {
    "user_id": "7", "version": 3, "events_applied": 12, "event_ts": 1.0, "embedding": [1.0], "model": "m",
    "top_interests": [{"category": "Drama", "p": 0.4}],
    "last_event": {"event_id": "e1", "type": "order", "item_id": "1"},
    "recommendations": [{"item_id": "2", "score": 1.0}, {"item_id": "3", "score": 0.5}],
}  # fmt: skip


def test_tail_lines_and_the_live_view_show_titles_and_recommendations():
    title = Titles(None)  # no broker: titles given directly
    title.titles = {"1": "Toy Story (1995)", "2": "Heat (1995)", "3": "A very long title " * 5}
    line = format_update(UPDATE, title)
    assert "last=order:Toy Story (1995)" in line and "next=[Heat (1995); A very long title" in line
    assert len(line) < 200  # long titles are cut
    assert "last=order:1 " in format_update(UPDATE) and "next=[2; 3]" in format_update(UPDATE)
    state = LiveState(title=title)
    state.add(Record("interest-updates", "7", UPDATE, {}))
    console = Console(width=200, record=True)
    console.print(state.render())
    text = console.export_text()
    assert "Toy Story (1995)" in text and "Heat (1995)" in text and "recommended next" in text
