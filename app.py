"""The app's entry point: page set-up and the navigation, nothing else. Run with ``make app``.

Every page is a file in ``app_pages/`` (not ``pages/``: Streamlit lists a folder of that name itself, so the first
load read "app"); the helpers they share live in ``ui/``. A new page is a new file plus one ``st.Page`` line here
(a new sidebar section is a new key of ``PAGES``).
"""

from __future__ import annotations

import streamlit as st

import ui

st.set_page_config(page_title="Anomaly workbench", page_icon="🔍", layout="wide")

HOME = st.Page("app_pages/1_Data_and_models.py", title="Data & models", icon=":material/home:", url_path="data",
               default=True)
PAGES = {
    "Workbench": [
        HOME,
        st.Page("app_pages/2_Scores.py", title="Scores", icon=":material/bar_chart:"),
        st.Page("app_pages/3_Thresholds.py", title="Thresholds", icon=":material/tune:"),
        st.Page("app_pages/4_Heatmaps.py", title="Heatmaps", icon=":material/local_fire_department:"),
        st.Page("app_pages/5_Score_images.py", title="Score images", icon=":material/image_search:"),
    ],
    "Explain": [st.Page("app_pages/6_GAIN_MTL_CAM.py", title="GAIN-MTL CAM", icon=":material/visibility:")],
    "Experiments": [st.Page("app_pages/7_Experiments.py", title="Experiments", icon=":material/science:")],
}
ui.HOME_PAGE = HOME
st.navigation(PAGES).run()
