// Masked packing and pack blending: the two index builders behind megatron_mio's packed dataset.
//
// pack_documents: documents (given by their lengths) -> packs of at most seq_length tokens,
//   never splitting a document.  Packable documents are shuffled once (seeded, in cache-sized
//   buckets), cut into windows of `window` documents, and each window is packed best-fit-decreasing: the
//   longest document first, each into the open pack whose free space is the smallest that still
//   holds it (ties: the pack opened first), a new pack when none does.  Documents longer than
//   seq_length (and empty ones) are dropped and counted.  Output is compressed: pack p holds
//   doc_ids[pack_offsets[p] : pack_offsets[p + 1]].
// blend_indices: sample i of a mixture -> (dataset, running sample number in that dataset).
//   Dataset d's j-th sample may appear at position t (1-based) once weight_d * t > j - 1 and must
//   appear by weight_d * t >= j; scheduling these unit jobs earliest-deadline-first (optimal for
//   unit jobs) keeps every prefix within one sample of weight_d * t for every dataset, which
//   Tijdeman's chairman-assignment theorem guarantees is always possible.  (Picking the
//   dataset with the largest deficit, as Megatron's blending helper does, can drift past one.)
//
// megatron_mio/data/packing.py holds plain-Python references of both; tests compare them.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

// splitmix64: tiny, fast and trivially reproducible in Python (see packing.py).
struct SplitMix64 {
  uint64_t state;
  explicit SplitMix64(uint64_t seed) : state(seed) {}
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
};

constexpr uint64_t kShuffleStream = 0xD1B54A32D192ED03ULL;  // seed offset of the in-bucket shuffle
constexpr int64_t kShuffleBucketSize = 16384;  // documents per shuffle bucket (64 KiB of ids)

// log2 of the number of shuffle buckets: a power of two with about kShuffleBucketSize per bucket.
int shuffle_bucket_bits(int64_t n) {
  int bits = 0;
  while ((kShuffleBucketSize << bits) < n) ++bits;
  return bits;
}

// Open packs of one window, bucketed by free space so that "smallest free space >= length" is a
// scan over a bitset of at most seq_length / 64 words rather than over all open packs.
class FreeSpaceIndex {
 public:
  explicit FreeSpaceIndex(int64_t seq_length)
      : buckets_(seq_length + 1), bits_((seq_length + 64) / 64, 0) {}

  void insert(int64_t free_space, int32_t pack) {
    auto& heap = buckets_[free_space];
    heap.push_back(pack);
    std::push_heap(heap.begin(), heap.end(), std::greater<int32_t>());
    bits_[free_space >> 6] |= uint64_t{1} << (free_space & 63);
  }

  // The free space of the best-fitting pack for `length`, or -1 if no open pack holds it.
  int64_t best_fit(int64_t length) const {
    size_t word = static_cast<size_t>(length >> 6);
    uint64_t bits = bits_[word] & (~uint64_t{0} << (length & 63));
    while (true) {
      if (bits) return static_cast<int64_t>(word * 64 + __builtin_ctzll(bits));
      if (++word == bits_.size()) return -1;
      bits = bits_[word];
    }
  }

  // Remove and return the earliest-opened pack with exactly this free space.
  int32_t pop(int64_t free_space) {
    auto& heap = buckets_[free_space];
    std::pop_heap(heap.begin(), heap.end(), std::greater<int32_t>());
    const int32_t pack = heap.back();
    heap.pop_back();
    if (heap.empty()) bits_[free_space >> 6] &= ~(uint64_t{1} << (free_space & 63));
    return pack;
  }

  void clear() {
    for (size_t w = 0; w < bits_.size(); ++w) {
      for (uint64_t bits = bits_[w]; bits; bits &= bits - 1) {
        buckets_[w * 64 + __builtin_ctzll(bits)].clear();
      }
      bits_[w] = 0;
    }
  }

 private:
  std::vector<std::vector<int32_t>> buckets_;
  std::vector<uint64_t> bits_;
};

py::dict pack_documents(py::array_t<int32_t, py::array::c_style | py::array::forcecast> lengths_in,
                        int64_t seq_length, int64_t window, uint64_t seed,
                        int64_t max_documents_per_pack) {
  if (lengths_in.ndim() != 1) throw std::invalid_argument("pack_documents: lengths must be 1-D");
  if (seq_length <= 0 || seq_length > std::numeric_limits<int32_t>::max())
    throw std::invalid_argument("pack_documents: seq_length must be in [1, 2^31)");
  if (window <= 0 || window > std::numeric_limits<int32_t>::max())
    throw std::invalid_argument("pack_documents: window must be in [1, 2^31)");
  if (max_documents_per_pack < 0)
    throw std::invalid_argument("pack_documents: max_documents_per_pack must be >= 0");
  const int64_t n = lengths_in.shape(0);
  if (n > std::numeric_limits<int32_t>::max())
    throw std::invalid_argument("pack_documents: more than 2^31-1 documents in one dataset");
  const int32_t* lengths = lengths_in.data();

  py::array_t<int32_t> doc_ids_arr(n);
  std::vector<int64_t> pack_offsets{0};
  int64_t n_too_long = 0, n_empty = 0, too_long_tokens = 0;
  {
    py::gil_scoped_release release;
    int32_t* order = doc_ids_arr.mutable_data();
    // Keep the documents that can be packed (one sequential pass over the lengths).
    int64_t kept = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t len = lengths[i];
      if (len < 0) throw std::invalid_argument("pack_documents: negative document length");
      if (len == 0) {
        ++n_empty;
      } else if (len > seq_length) {
        ++n_too_long;
        too_long_tokens += len;
      } else {
        ++kept;
      }
    }
    // Shuffle them (Rao-Sandelius): each document draws a random bucket, then each bucket is
    // Fisher-Yates shuffled.  Uniform like a plain Fisher-Yates, but every memory access stays
    // inside one cache-sized bucket or is a sequential stream: 100M documents take seconds, not
    // a minute of cache misses.  The bucket draws are replayed (count, then place) instead of
    // stored, so no extra memory per document.
    const int bits = shuffle_bucket_bits(kept);
    std::vector<int64_t> bucket_start((size_t{1} << bits) + 1, 0);
    auto bucket_of = [bits](SplitMix64& rng) -> size_t {
      const uint64_t r = rng.next();
      return bits ? static_cast<size_t>(r >> (64 - bits)) : 0;
    };
    {
      SplitMix64 rng(seed);
      for (int64_t i = 0; i < n; ++i)
        if (lengths[i] > 0 && lengths[i] <= seq_length) ++bucket_start[bucket_of(rng) + 1];
    }
    for (size_t b = 1; b < bucket_start.size(); ++b) bucket_start[b] += bucket_start[b - 1];
    {
      std::vector<int64_t> cursor(bucket_start.begin(), bucket_start.end() - 1);
      SplitMix64 rng(seed);
      for (int64_t i = 0; i < n; ++i)
        if (lengths[i] > 0 && lengths[i] <= seq_length) order[cursor[bucket_of(rng)]++] = static_cast<int32_t>(i);
    }
    {
      SplitMix64 rng(seed ^ kShuffleStream);
      for (size_t b = 0; b + 1 < bucket_start.size(); ++b) {
        int32_t* bucket = order + bucket_start[b];
        for (int64_t i = bucket_start[b + 1] - bucket_start[b] - 1; i > 0; --i) {
          const int64_t j = static_cast<int64_t>(rng.next() % static_cast<uint64_t>(i + 1));
          std::swap(bucket[i], bucket[j]);
        }
      }
    }

    FreeSpaceIndex open_packs(seq_length);
    std::vector<uint64_t> sorted;  // (seq_length - length) << 32 | position in the window
    std::vector<int32_t> window_docs, pack_of, pack_count, pack_size;
    for (int64_t start = 0; start < kept; start += window) {
      const int64_t stop = std::min(kept, start + window);
      // Longest first, ties in window order: unique keys, so std::sort is as good as stable.
      window_docs.assign(order + start, order + stop);
      sorted.resize(window_docs.size());
      for (size_t k = 0; k < window_docs.size(); ++k)
        sorted[k] = (static_cast<uint64_t>(seq_length - lengths[window_docs[k]]) << 32) | k;
      std::sort(sorted.begin(), sorted.end());
      pack_of.resize(sorted.size());
      pack_count.clear();
      for (size_t k = 0; k < sorted.size(); ++k) {
        const int64_t len = seq_length - static_cast<int64_t>(sorted[k] >> 32);
        int64_t free_space = open_packs.best_fit(len);
        int32_t pack;
        if (free_space < 0) {
          pack = static_cast<int32_t>(pack_count.size());
          pack_count.push_back(0);
          free_space = seq_length;
        } else {
          pack = open_packs.pop(free_space);
        }
        pack_of[k] = pack;
        const int64_t left = free_space - len;
        ++pack_count[pack];
        if (left > 0 && (max_documents_per_pack == 0 || pack_count[pack] < max_documents_per_pack))
          open_packs.insert(left, pack);
      }
      open_packs.clear();
      // Counting sort by pack (stable: documents keep their insertion order inside a pack).
      const size_t n_packs = pack_count.size();
      pack_size.assign(n_packs + 1, 0);
      for (int32_t p : pack_of) ++pack_size[p + 1];
      for (size_t p = 0; p < n_packs; ++p) {
        pack_size[p + 1] += pack_size[p];
        pack_offsets.push_back(start + pack_size[p + 1]);
      }
      for (size_t k = 0; k < sorted.size(); ++k)
        order[start + pack_size[pack_of[k]]++] = window_docs[sorted[k] & 0xFFFFFFFFu];
    }
    if (kept < n) {
      py::gil_scoped_acquire acquire;
      doc_ids_arr.resize({kept});
    }
  }
  py::array_t<int64_t> offsets_arr(static_cast<py::ssize_t>(pack_offsets.size()));
  std::copy(pack_offsets.begin(), pack_offsets.end(), offsets_arr.mutable_data());
  py::dict out;
  out["pack_offsets"] = offsets_arr;
  out["doc_ids"] = doc_ids_arr;
  out["n_too_long"] = n_too_long;
  out["too_long_tokens"] = too_long_tokens;
  out["n_empty"] = n_empty;
  return out;
}

py::tuple blend_indices(py::array_t<double, py::array::c_style | py::array::forcecast> weights_in,
                        int64_t num_samples) {
  if (weights_in.ndim() != 1 || weights_in.shape(0) == 0)
    throw std::invalid_argument("blend_indices: weights must be a non-empty 1-D array");
  if (weights_in.shape(0) > std::numeric_limits<int16_t>::max())
    throw std::invalid_argument("blend_indices: too many datasets");
  if (num_samples < 0) throw std::invalid_argument("blend_indices: num_samples must be >= 0");
  const auto k = static_cast<size_t>(weights_in.shape(0));
  std::vector<double> weights(weights_in.data(), weights_in.data() + k);
  double total = 0.0;
  for (double w : weights) {
    if (!(w > 0.0) || !std::isfinite(w))
      throw std::invalid_argument("blend_indices: weights must be finite and > 0");
    total += w;
  }
  for (double& w : weights) w /= total;

  py::array_t<int16_t> dataset_arr(num_samples);
  py::array_t<int64_t> sample_arr(num_samples);
  {
    py::gil_scoped_release release;
    int16_t* dataset = dataset_arr.mutable_data();
    int64_t* sample = sample_arr.mutable_data();
    std::vector<int64_t> taken(k, 0);
    for (int64_t i = 0; i < num_samples; ++i) {
      const double t = static_cast<double>(i + 1);
      // Earliest deadline first: among datasets whose next sample is due (weight * t > taken),
      // the one whose next sample's deadline (taken + 1) / weight comes first.
      size_t best = k;
      double best_deadline = 0.0;
      for (size_t d = 0; d < k; ++d) {
        const double taken_d = static_cast<double>(taken[d]);
        if (!(weights[d] * t > taken_d)) continue;
        const double deadline = (taken_d + 1.0) / weights[d];
        if (best == k || deadline < best_deadline) {
          best = d;
          best_deadline = deadline;
        }
      }
      if (best == k) best = 0;  // unreachable: the due counts always sum to at least t
      dataset[i] = static_cast<int16_t>(best);
      sample[i] = taken[best]++;
    }
  }
  return py::make_tuple(dataset_arr, sample_arr);
}

}  // namespace

void register_packing(py::module_& m) {
  m.def("pack_documents", &pack_documents, py::arg("lengths"), py::arg("seq_length"),
        py::arg("window"), py::arg("seed"), py::arg("max_documents_per_pack") = 0,
        "Best-fit-decreasing packing in shuffled windows. Returns a dict with pack_offsets "
        "(int64, n_packs+1), doc_ids (int32), n_too_long, too_long_tokens, n_empty.");
  m.def("blend_indices", &blend_indices, py::arg("weights"), py::arg("num_samples"),
        "Interleave datasets at the given weights: (dataset_index int16, dataset_sample_index int64).");
}
