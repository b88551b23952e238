// The exchange through c10d's TCPStore (distributed/world.h), between two ranks of one job run as two threads of
// this process: payloads past the store server's per-value limit (chunked), empty ones, one of exactly one chunk,
// several collectives in a row (each deleting the previous one's keys): every rank gets every rank's bytes.
#include <gtest/gtest.h>

#include <thread>
#include <unistd.h>

#include "bayesq/distributed/world.h"

using namespace bayesq;

namespace {

std::vector<uint8_t> payload(int rank, int round) {
  static const std::size_t sizes[3][2] = {{(9u << 20) + 5, 0}, {1, 4u << 20}, {(12u << 20) + 1, (12u << 20) + 1}};
  std::vector<uint8_t> bytes(sizes[round][rank]);
  for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 31 + rank * 7 + round);
  return bytes;
}

}  // namespace

TEST(World, StoreExchangeCarriesLargeEmptyAndRepeatedPayloads) {
  const int port = 24000 + static_cast<int>(::getpid() % 20000);
  std::vector<std::vector<std::vector<uint8_t>>> got[2];
  std::string error[2];
  auto rank_main = [&](int rank) {
    try {
      LaunchInfo launch;
      launch.rank = rank;
      launch.world_size = 2;
      launch.local_rank = rank;
      launch.master_addr = "127.0.0.1";
      launch.master_port = port;
      launch.launcher = "test";
      const std::shared_ptr<World> world = World::join(launch, std::chrono::seconds(60), Exchange::store);
      EXPECT_STREQ(world->exchange(), "store");
      for (int round = 0; round < 3; ++round) got[rank].push_back(world->all_gather_bytes(payload(rank, round)));
      // Rank 0 serves the store: without this it could leave while rank 1 still reads the last round (CI saw
      // rank 1 fail with a broken pipe).
      world->finish();
    } catch (const std::exception& e) {
      error[rank] = e.what();
    }
  };
  std::thread other(rank_main, 1);
  rank_main(0);
  other.join();
  for (int rank = 0; rank < 2; ++rank) {
    SCOPED_TRACE(rank);
    ASSERT_EQ(error[rank], "");
    ASSERT_EQ(got[rank].size(), 3u);
    for (int round = 0; round < 3; ++round) {
      ASSERT_EQ(got[rank][round].size(), 2u);
      for (int from = 0; from < 2; ++from)
        EXPECT_TRUE(got[rank][round][from] == payload(from, round)) << "round " << round << " from rank " << from;
    }
  }
}
