# Tests that need libtorch, Python fixtures, or the bayesq binary.
set(BAYESQ_PYTHON /usr/bin/python3 CACHE FILEPATH "Python with torch and torchvision, used to make test fixtures")
set(BAYESQ_FIXTURES_DIR ${CMAKE_CURRENT_BINARY_DIR}/fixtures)

add_test(NAME make_fixtures
         COMMAND ${BAYESQ_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/fixtures/make_fixtures.py ${BAYESQ_FIXTURES_DIR})
set_tests_properties(make_fixtures PROPERTIES FIXTURES_SETUP bayesq_fixtures LABELS torch)
# Hostile inputs (out-of-bounds tensor views, malformed pickles, fuzzed data files) made from the fixtures.
add_test(NAME make_hostile
         COMMAND ${BAYESQ_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/fixtures/make_hostile.py ${BAYESQ_FIXTURES_DIR})
set_tests_properties(make_hostile PROPERTIES FIXTURES_SETUP bayesq_fixtures DEPENDS make_fixtures LABELS cli)
# One tiny model per kind of layer users bring (issue 20's coverage suite), with a manifest.
add_test(NAME make_coverage
         COMMAND ${BAYESQ_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/fixtures/make_coverage.py ${BAYESQ_FIXTURES_DIR})
set_tests_properties(make_coverage PROPERTIES FIXTURES_SETUP bayesq_fixtures DEPENDS make_fixtures LABELS cli)

add_executable(bayesq_torch_tests
  torch/test_model_io.cpp
  torch/test_curvature.cpp
  torch/test_pipeline.cpp
  torch/test_gptq.cpp
  torch/test_distill.cpp
  torch/test_world.cpp
)
target_link_libraries(bayesq_torch_tests PRIVATE bayesq_torch GTest::gtest GTest::gtest_main)
set_target_properties(bayesq_torch_tests PROPERTIES CXX_STANDARD ${BAYESQ_TORCH_CXX_STANDARD} CXX_STANDARD_REQUIRED ON)
target_compile_definitions(bayesq_torch_tests PRIVATE
  BAYESQ_FIXTURES_DIR="${BAYESQ_FIXTURES_DIR}"
  BAYESQ_PYTHON="${BAYESQ_PYTHON}"
  BAYESQ_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
target_precompile_headers(bayesq_torch_tests REUSE_FROM bayesq_torch)
gtest_discover_tests(bayesq_torch_tests DISCOVERY_TIMEOUT 120
                     PROPERTIES FIXTURES_REQUIRED bayesq_fixtures LABELS torch)

# The command line, as a user runs it: exit codes, one-line errors, no partial outputs. No libtorch headers here.
add_executable(bayesq_cli_tests cli/test_cli.cpp cli/test_reliability.cpp cli/test_distributed.cpp)
# bayesq_core for the method table (no libtorch): the help test loops over its rows.
target_link_libraries(bayesq_cli_tests PRIVATE bayesq_core GTest::gtest GTest::gtest_main nlohmann_json::nlohmann_json)
target_compile_features(bayesq_cli_tests PRIVATE cxx_std_17)
target_compile_definitions(bayesq_cli_tests PRIVATE
  BAYESQ_FIXTURES_DIR="${BAYESQ_FIXTURES_DIR}"
  BAYESQ_BINARY="$<TARGET_FILE:bayesq>"
  BAYESQ_PYTHON="${BAYESQ_PYTHON}"
  BAYESQ_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
add_dependencies(bayesq_cli_tests bayesq)
gtest_discover_tests(bayesq_cli_tests DISCOVERY_TIMEOUT 60
                     PROPERTIES FIXTURES_REQUIRED bayesq_fixtures LABELS cli)
