"""Customer-service answer retrieval: the answer set, the bi-encoder, the index and the retriever."""
