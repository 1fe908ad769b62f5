"""History's count log: past differentials filtered by category, date and person, and their CSV."""

from __future__ import annotations

import streamlit as st

from bloodcells import countlog
from bloodcells.countlog import count_log, filter_log, log_csv, log_dates, log_is_cut, log_rows
from bloodcells.store import Store


def show_count_log(store: Store) -> None:
    span = log_dates(store)
    if span is None:
        st.info("No differential yet: classify cells (or type white cells on smear fields) and sign them off.")
        return
    categories, person, dates = st.columns([2, 2, 2])
    previous = st.session_state.get("log_dates_span")
    if previous != span:
        if previous is not None and tuple(st.session_state.get("log_dates", ())) == previous:
            del st.session_state["log_dates"]  # left at every date: it takes in the analyses made since
        st.session_state["log_dates_span"] = span
    period = dates.date_input("Dates", span, key="log_dates", help="When the analysis was made (inclusive).")
    start, end = (tuple(period) + (None, None))[:2] if isinstance(period, tuple | list) else (period, period)
    try:
        entries = count_log(store, start=start, end=end)
    except ValueError as error:
        st.error(str(error))
        return
    if log_is_cut(store, start, end):
        st.warning(f"More than {countlog.LOG_LIMIT} analyses were made in these dates: the newest "
                   f"{countlog.LOG_LIMIT} are read. "
                   "Choose fewer dates to see the earlier ones.")
    # Choices stay offered when other dates hold none of them (a multiselect drops values it no longer offers).
    category_choices = {e.category for e in entries} | set(st.session_state.get("log_category", ()))
    people_choices = set().union(*(e.people for e in entries), st.session_state.get("log_person", ()))
    chosen_categories = categories.multiselect("Category", sorted(category_choices), key="log_category",
                                               placeholder="every category")
    chosen_people = person.multiselect("Reviewer", sorted(people_choices), key="log_person",
                                       placeholder="anyone", help="Who reviewed cells or signed it off.")
    shown = filter_log(entries, categories=chosen_categories, people=chosen_people)
    st.caption(f"{len(shown)} of {len(entries)} differentials · "
               + " · ".join(f"{status} {sum(1 for e in shown if e.status == status)}"
                            for status in ("signed", "amended", "reopened", "not signed")))
    st.dataframe(log_rows(shown), hide_index=True, key="count_log_table",
                 column_config={"id": st.column_config.NumberColumn("id", format="#%d")})
    st.download_button("Download count log (CSV)", lambda: log_csv(shown), file_name="count-log.csv", mime="text/csv",
                       on_click="ignore", key="count_log_csv", icon=":material/download:", disabled=not shown)
