# The explorer as the hosted demo runs it: `streamlit run app.py` with .streamlit/config.toml
# (settings for a shared server), the shipped run in assets/, CPU only, unprivileged user.
#
#   docker build -t tda-explorer .
#   docker run --rm -p 8501:8501 tda-explorer                  # http://localhost:8501
#   docker run --rm -p 8501:8501 -v /srv/runs:/runs:ro -e TDA_RUNS=/runs -e TDA_JOBS=2 tda-explorer
#
# Limits (TDA_MAX_TOPK, TDA_JOBS, TDA_QUEUE, ...: tda/limits.py) and any Streamlit option
# (STREAMLIT_SERVER_PORT, ...) are environment variables. Health: GET /_stcore/health -> "ok".
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STREAMLIT_SERVER_PORT=8501 \
    STREAMLIT_SERVER_ADDRESS=0.0.0.0

RUN useradd --create-home --uid 1000 app
WORKDIR /home/app/tda

# torch from PyPI's default index is a multi-GB CUDA build: take the pinned version's CPU wheel
COPY requirements.txt .
RUN pip install "$(grep '^torch==' requirements.txt)" --index-url https://download.pytorch.org/whl/cpu \
    && pip install -r requirements.txt

COPY .streamlit/ .streamlit/
COPY tda/ tda/
COPY ui/ ui/
COPY pages/ pages/
COPY app.py .
COPY assets/ assets/

USER app
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/_stcore/health' % os.environ['STREAMLIT_SERVER_PORT'], timeout=4)" || exit 1
CMD ["streamlit", "run", "app.py"]
