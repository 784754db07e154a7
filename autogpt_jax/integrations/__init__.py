"""Our models inside other frameworks (optional extras): ``integrations.langchain``."""
