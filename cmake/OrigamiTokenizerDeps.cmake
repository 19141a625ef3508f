# Libraries behind runtime/tokenizer*.cpp, linked into origami_runtime (included from the
# top-level CMakeLists.txt right after origami_runtime is defined).
#   PCRE2 (libpcre2-dev): the pre-tokenizer regexes read from tokenizer.json files.
#   nlohmann/json (nlohmann-json3-dev): header only.
#   ICU (libicu-dev), optional: NFC/NFKC/... normalizers (Qwen2's tokenizer.json uses NFC);
#     without it such files are refused with a message that says so.
# SentencePiece models are read by runtime/tokenizer_sentencepiece.cpp itself: Debian's
# libsentencepiece exports a bundled protobuf 3.14 that collides with the system protobuf.
find_package(PkgConfig REQUIRED)
pkg_check_modules(ORIGAMI_PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
find_package(nlohmann_json 3 REQUIRED)
pkg_check_modules(ORIGAMI_ICU IMPORTED_TARGET icu-uc)
target_link_libraries(origami_runtime PUBLIC PkgConfig::ORIGAMI_PCRE2 nlohmann_json::nlohmann_json)
if(ORIGAMI_ICU_FOUND)
  target_link_libraries(origami_runtime PUBLIC PkgConfig::ORIGAMI_ICU)
  target_compile_definitions(origami_runtime PRIVATE ORIGAMI_TOKENIZER_ICU=1)
else()
  target_compile_definitions(origami_runtime PRIVATE ORIGAMI_TOKENIZER_ICU=0)
endif()
message(STATUS "origami: tokenizers with PCRE2 ${ORIGAMI_PCRE2_VERSION}, ICU ${ORIGAMI_ICU_FOUND}")
