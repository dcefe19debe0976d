from flask import Flask

from portal.config import load_config, normalise_database_url


def test_postgres_urls_use_psycopg3():
    assert normalise_database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_database_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_database_url("sqlite:///x.db") == "sqlite:///x.db"


def test_billfold_environment_variables_override_the_config_class(monkeypatch, tmp_path):
    monkeypatch.setenv("BILLFOLD_APP_NAME", "Ledger Co")
    monkeypatch.setenv("BILLFOLD_DATABASE_URL", "postgresql://postgres@127.0.0.1/x")
    monkeypatch.setenv("BILLFOLD_INVITATION_TTL_HOURS", "12")
    app = Flask("t", instance_path=str(tmp_path))
    load_config(app, None)
    assert app.config["APP_NAME"] == "Ledger Co"
    assert app.config["INVITATION_TTL_HOURS"] == 12
    assert app.config["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://postgres@127.0.0.1/x"


def test_sqlite_in_the_instance_folder_by_default(monkeypatch, tmp_path):
    monkeypatch.delenv("BILLFOLD_DATABASE_URL", raising=False)
    app = Flask("t", instance_path=str(tmp_path))
    load_config(app, None)
    assert app.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path}/billfold.db"
